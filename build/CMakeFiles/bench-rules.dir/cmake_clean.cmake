file(REMOVE_RECURSE
  "CMakeFiles/bench-rules.dir/tools/bench-rules.c.o"
  "CMakeFiles/bench-rules.dir/tools/bench-rules.c.o.d"
  "bench-rules"
  "bench-rules.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/bench-rules.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
