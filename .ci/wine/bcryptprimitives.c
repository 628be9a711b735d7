/* Stand-in for Windows' bcryptprimitives.dll, which Debian's Wine 8.0 lacks. Rust's std
 * (>= 1.78) imports ProcessPrng from it to seed HashMap keys and for getrandom, so every
 * Rust executable exits with status 53 under that Wine without it (rust-lang/rust#121337).
 * Built with mingw by .ci/run and placed in the Wine prefix's system32; CI tooling only,
 * never shipped. */
#include <windows.h>

BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* RtlGenRandom, advapi32 */

BOOL WINAPI ProcessPrng(PBYTE data, SIZE_T length)
{
    while (length > 0) {
        ULONG chunk = length > 0x10000000 ? 0x10000000 : (ULONG)length;
        if (!SystemFunction036(data, chunk))
            return FALSE;
        data += chunk;
        length -= chunk;
    }
    return TRUE;
}
