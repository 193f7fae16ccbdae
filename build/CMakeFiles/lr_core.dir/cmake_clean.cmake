file(REMOVE_RECURSE
  "CMakeFiles/lr_core.dir/daemon/log.c.o"
  "CMakeFiles/lr_core.dir/daemon/log.c.o.d"
  "liblr_core.a"
  "liblr_core.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/lr_core.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
