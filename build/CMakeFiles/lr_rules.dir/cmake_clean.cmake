file(REMOVE_RECURSE
  "CMakeFiles/lr_rules.dir/rules/lead.c.o"
  "CMakeFiles/lr_rules.dir/rules/lead.c.o.d"
  "liblr_rules.a"
  "liblr_rules.pdb"
)

# Per-language clean rules from dependency scanning.
foreach(lang C)
  include(CMakeFiles/lr_rules.dir/cmake_clean_${lang}.cmake OPTIONAL)
endforeach()
