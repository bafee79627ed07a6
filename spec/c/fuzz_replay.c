/*
** fuzz_replay.c: runs files through the fuzz target (sse_fuzz.c) without
** libFuzzer, so the regression cases in spec/c/fuzz_regress/ are checked by
** any C compiler (make fuzz-regress builds it with ASan + UBSan).
**
**   sse_fuzz_replay FILE...     prints "N passed, N failed"
**
** The target calls abort() on a mismatch; the sanitizers abort on a memory
** error. Either ends the run with the file named on stderr first.
*/
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput (const uint8_t *data, size_t size);


static unsigned char *slurp (const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  unsigned char *p = NULL;
  size_t cap = 0, len = 0, got;
  if (f == NULL) return NULL;
  do {
    if (len == cap) {
      unsigned char *q;
      cap = cap ? 2 * cap : 65536;
      q = (unsigned char *)realloc(p, cap);
      if (q == NULL) { free(p); fclose(f); return NULL; }
      p = q;
    }
    got = fread(p + len, 1, cap - len, f);
    len += got;
  } while (got > 0);
  fclose(f);
  *n = len;
  return p;
}


int main (int argc, char **argv) {
  int i, npass = 0, nfail = 0;
  for (i = 1; i < argc; i++) {
    size_t n = 0;
    unsigned char *p = slurp(argv[i], &n);
    if (p == NULL) {
      fprintf(stderr, "cannot read %s\n", argv[i]);
      nfail++;
      continue;
    }
    fprintf(stderr, "%s (%lu bytes)\n", argv[i], (unsigned long)n);
    LLVMFuzzerTestOneInput(p, n);   /* aborts on a failed check */
    free(p);
    npass++;
  }
  printf("%d passed, %d failed\n", npass, nfail);
  return nfail != 0;
}
