"""augdefense: data-poisoning attacks and augmentation / DP defenses, reproduced.

Importing the package is cheap (no torch); the heavy modules import torch themselves.
"""

__version__ = "0.1.0"
