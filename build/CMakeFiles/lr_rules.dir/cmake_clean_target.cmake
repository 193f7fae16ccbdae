file(REMOVE_RECURSE
  "liblr_rules.a"
)
