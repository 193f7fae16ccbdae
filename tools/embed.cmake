# embed.cmake - writes file IN as a NUL-terminated C array NAME into OUT.
file(READ ${IN} hex HEX)
string(REGEX REPLACE "([0-9a-f][0-9a-f])" "0x\\1," body "${hex}")
file(WRITE ${OUT} "/* generated from ${IN} - do not edit */\n"
  "extern const char ${NAME}[];\nextern const unsigned long ${NAME}_len;\n"
  "const char ${NAME}[] = {${body} 0};\nconst unsigned long ${NAME}_len = sizeof ${NAME} - 1;\n")
