# Empty dependencies file for lr_rules.
# This may be replaced when dependencies are built.
