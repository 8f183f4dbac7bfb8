"""What the papers call each output: the HTML report's categories and the figures' titles. An
experiment (a config key) is named after the table or figure it reproduces; the numbering is
DP-InstaHide's (Borgnia et al. 2021), whose tables include the short paper's."""

from __future__ import annotations

# Experiment name -> the paper's name for what it reproduces.
EXPERIMENT_TITLES = {
    "table1": "Table 1 (DP-InstaHide)",
    "table2": "Table 2 (DP-InstaHide)",
    "table3": "Table 3 (DP-InstaHide)",
    "table4": "Table 4 (DP-InstaHide)",
    "table5": "Table 5 (DP-InstaHide)",
    "table6": "Table 6 (DP-InstaHide)",
    "figure4b": "Figure 4b (DP-InstaHide)",
    "figure5": "Figure 5 (DP-InstaHide)",
    "backdoor_control": "Backdoor clean control",
}
# The outputs that are no experiment's.
ILLUSTRATIONS = "Figures 1 and 3 (DP-InstaHide)"
FIGURE4A = "Figure 4a (DP-InstaHide)"
METRICS = "Per-run metrics"
COMPARISON = "Paper comparison"
CLAIMS = "Claims"


def experiment_title(name: str) -> str:
    """The paper's name for experiment ``name``; an experiment the papers do not have (one a user
    added) is called by its config key, marked as such."""
    return EXPERIMENT_TITLES.get(name, f"Experiment {name}")
