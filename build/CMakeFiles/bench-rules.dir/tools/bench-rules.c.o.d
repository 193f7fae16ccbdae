CMakeFiles/bench-rules.dir/tools/bench-rules.c.o: \
 /work/main/tools/bench-rules.c /usr/include/stdc-predef.h
