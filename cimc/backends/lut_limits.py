"""The table-read kernel's fixed size, shared by cimc.backends.lut_reads (which cuts wider tiles) and the numba
kernel itself (cimc.backends._lut_kernel, its stack buffers), so that neither imports the other."""
MAX_LINES = 512                            # lines per kernel call (its stack buffers); wider tiles go in pieces
