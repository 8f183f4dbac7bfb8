"""The functions the training, crafting and filtering rules run (one module per kind of job, so
each rule's code inputs are the import closure of its own module)."""
