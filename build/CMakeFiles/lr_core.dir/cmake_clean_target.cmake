file(REMOVE_RECURSE
  "liblr_core.a"
)
