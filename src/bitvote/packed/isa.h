/* What kernels.c (the convs) and pack.c (the packer) share: the ISA ids of build.ISAS and
 * the run-time pick of the best one this CPU runs. */
#ifndef BV_ISA_H
#define BV_ISA_H
enum { BV_ISA_PORTABLE = 0, BV_ISA_AVX2 = 1, BV_ISA_AVX512BW = 2, BV_ISA_AVX512POPCNT = 3 };
int bv_best_isa(void);
#endif
