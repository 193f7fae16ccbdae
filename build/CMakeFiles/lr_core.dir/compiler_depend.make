# Empty compiler generated dependencies file for lr_core.
# This may be replaced when dependencies are built.
