# Empty compiler generated dependencies file for leadrouterd.
# This may be replaced when dependencies are built.
