file(REMOVE_RECURSE
  "CMakeFiles/leadrouterd.dir/daemon/main.c.o"
  "CMakeFiles/leadrouterd.dir/daemon/main.c.o.d"
  "leadrouterd"
  "leadrouterd.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/leadrouterd.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
