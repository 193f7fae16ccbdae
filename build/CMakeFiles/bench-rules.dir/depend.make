# Empty dependencies file for bench-rules.
# This may be replaced when dependencies are built.
