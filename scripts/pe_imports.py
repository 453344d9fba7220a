#!/usr/bin/env python3
"""Checks that a Windows build starts on Windows 7 / Server 2008 R2, from its PE import table.

    python3 scripts/pe_imports.py EXE [--expect-newer]

Windows' loader refuses to start an exe that imports a DLL or a function the system lacks, so the
import table (read with MinGW-w64's objdump) decides. Fails, naming each import and why, when the
exe imports:
- a function of NEWER below: each is newer than Windows 7 and was seen in a Rust Windows build
  (Rust's standard library for the tier-1 targets, the windows crate) or sits beside one in the
  same Microsoft API family;
- an API set (api-ms-win-*): the loader resolves only the sets its Windows ships, and the ones
  Rust's crates use (synch-l1-2-0, winrt-error-l1-1-0) are Windows 8's;
- a DLL not in WINDOWS_7_DLLS: a new dependency whose DLL nobody has checked yet.
With --expect-newer it checks the checker instead: the tier-1 build (Windows 10 and later) must be
refused, or the check could pass on anything.

A build that passes is also said to start, or not, on Windows Server 2008 (not R2, Vista's kernel),
from the functions of WINDOWS_7_NEW it imports: WSUS 3.0 runs there too.
"""
import subprocess
import sys

# Minimum Windows versions from Microsoft's API reference, learn.microsoft.com/windows/win32/api/
# (the "Requirements" table of each page, path given), unless said otherwise.
NEWER = {
    # Rust's standard library on its tier-1 Windows targets (library/std/src/sys/pal/windows/c.rs
    # marks each ">= Win8"; the win7 target falls back or loads them at run time).
    "ProcessPrng": "Windows 8 (seccng/processprng; Rust std: Windows 10 and later)",
    "WaitOnAddress": "Windows 8 (synchapi/nf-synchapi-waitonaddress)",
    "WakeByAddressSingle": "Windows 8 (synchapi/nf-synchapi-wakebyaddresssingle)",
    "WakeByAddressAll": "Windows 8 (synchapi/nf-synchapi-wakebyaddressall)",
    "GetSystemTimePreciseAsFileTime": "Windows 8 (sysinfoapi/nf-sysinfoapi-getsystemtimepreciseasfiletime)",
    # std::net's hostname and the windows crate's error reporting.
    "GetHostNameW": "Windows 8 (winsock2/nf-winsock2-gethostnamew)",
    "RoOriginateErrorW": "Windows 8 (roerrorapi/nf-roerrorapi-rooriginateerrorw)",
    # Same families, so that a dependency update reaching for them is caught too.
    "SetThreadDescription": "Windows 10 1607 (processthreadsapi/nf-processthreadsapi-setthreaddescription)",
    "GetThreadDescription": "Windows 10 1607 (processthreadsapi/nf-processthreadsapi-getthreaddescription)",
    "CreateFile2": "Windows 8 (fileapi/nf-fileapi-createfile2)",
    "CopyFile2": "Windows 8 (winbase/nf-winbase-copyfile2)",
    "GetOverlappedResultEx": "Windows 8 (ioapiset/nf-ioapiset-getoverlappedresultex)",
    "VirtualAlloc2": "Windows 10 1803 (memoryapi/nf-memoryapi-virtualalloc2)",
    "MapViewOfFile3": "Windows 10 1803 (memoryapi/nf-memoryapi-mapviewoffile3)",
    "PrefetchVirtualMemory": "Windows 8 (memoryapi/nf-memoryapi-prefetchvirtualmemory)",
    "DiscardVirtualMemory": "Windows 8.1 (memoryapi/nf-memoryapi-discardvirtualmemory)",
    "GetSystemCpuSetInformation": "Windows 10 (processthreadsapi/nf-processthreadsapi-getsystemcpusetinformation)",
    "SetProcessMitigationPolicy": "Windows 8 (processthreadsapi/nf-processthreadsapi-setprocessmitigationpolicy)",
    "GetProcessMitigationPolicy": "Windows 8 (processthreadsapi/nf-processthreadsapi-getprocessmitigationpolicy)",
    "InitializeSynchronizationBarrier": "Windows 8 (synchapi/nf-synchapi-initializesynchronizationbarrier)",
    "GetCurrentPackageFullName": "Windows 8 (appmodel/nf-appmodel-getcurrentpackagefullname)",
    "GetCurrentPackageId": "Windows 8 (appmodel/nf-appmodel-getcurrentpackageid)",
    "GetFileInformationByName": "Windows 11 24H2 (winbase/nf-winbase-getfileinformationbyname)",
}

# Functions Windows 7 and Server 2008 R2 introduced, which Server 2008 (Vista's kernel) lacks; the
# first is Rust's standard library's, for the win7 target's Mutex::try_lock.
WINDOWS_7_NEW = {
    "TryAcquireSRWLockExclusive": "synchapi/nf-synchapi-tryacquiresrwlockexclusive",
    "TryAcquireSRWLockShared": "synchapi/nf-synchapi-tryacquiresrwlockshared",
}

# DLLs Windows 7 and Server 2008 R2 ship in System32, each one this build has been seen to import
# (or a close relative of one) and checked; msvcrt.dll is MinGW-w64's C runtime.
WINDOWS_7_DLLS = {
    "kernel32.dll", "ntdll.dll", "advapi32.dll", "user32.dll", "userenv.dll", "ws2_32.dll",
    "mswsock.dll", "iphlpapi.dll", "dnsapi.dll", "bcrypt.dll", "ncrypt.dll", "crypt32.dll",
    "secur32.dll", "ktmw32.dll", "msvcrt.dll", "ole32.dll", "oleaut32.dll", "rpcrt4.dll",
    "shell32.dll", "netapi32.dll", "gdi32.dll",
}
WHY_NOT_DLL = {
    "bcryptprimitives.dll": "its ProcessPrng export is Windows 8's (seccng/processprng)",
    "combase.dll": "first shipped with Windows 8 (Windows 7 has these COM functions in ole32.dll)",
}


def imports(exe):
    """(dll, function) pairs of the exe's import table, as objdump -p prints it."""
    out = subprocess.run(["x86_64-w64-mingw32-objdump", "-p", exe], check=True,
                         capture_output=True, text=True).stdout
    dll, pairs = None, []
    for line in out.splitlines():
        if "DLL Name:" in line:
            dll = line.split("DLL Name:")[1].strip()
        elif dll and line.startswith("\t") and len(line.split()) >= 3 and line.split()[1].isdigit():
            pairs.append((dll, line.split()[-1]))
        elif not line.strip():
            continue
        elif not line.startswith("\t"):
            dll = None
    return pairs


def refusals(pairs):
    found = []
    for dll in sorted({d for d, _ in pairs}):
        low = dll.lower()
        if low.startswith("api-ms-win-"):
            found.append(f"{dll}: an API set; the ones Rust's crates use are Windows 8's")
        elif low in WHY_NOT_DLL:
            found.append(f"{dll}: {WHY_NOT_DLL[low]}")
        elif low not in WINDOWS_7_DLLS:
            found.append(f"{dll}: not yet checked against Windows 7: confirm that Windows 7 and "
                         "Server 2008 R2 ship it, then add it to WINDOWS_7_DLLS in scripts/pe_imports.py")
    for dll, function in sorted(set(pairs)):
        if function in NEWER:
            found.append(f"{dll}!{function}: {NEWER[function]}")
    return found


def main():
    args = [a for a in sys.argv[1:] if a != "--expect-newer"]
    if len(args) != 1:
        sys.exit(__doc__)
    exe, expect_newer = args[0], "--expect-newer" in sys.argv
    pairs = imports(exe)
    if not pairs:
        sys.exit(f"{exe}: no imports read: is it a PE file? (objdump -p printed no import table)")
    found = refusals(pairs)
    dlls = len({d.lower() for d, _ in pairs})
    if expect_newer:
        if not found:
            sys.exit(f"{exe}: expected imports newer than Windows 7 and found none: the check is blind")
        print(f"{exe}: refused for Windows 7 as expected ({len(found)} imports), e.g. {found[0]}")
        return
    if found:
        print(f"{exe} would not start on Windows 7 / Server 2008 R2:", file=sys.stderr)
        for line in found:
            print(f"  {line}", file=sys.stderr)
        sys.exit(1)
    print(f"{exe}: {len(pairs)} imports from {dlls} DLLs, all present on Windows 7 / Server 2008 R2")
    vista = sorted({f for _, f in pairs if f in WINDOWS_7_NEW})
    if vista:
        print(f"{exe}: does not start on Windows Server 2008 (not R2): it imports "
              + ", ".join(f"{f} (Windows 7 / Server 2008 R2: {WINDOWS_7_NEW[f]})" for f in vista))
    else:
        print(f"{exe}: none of the functions Windows 7 introduced: may start on Windows Server 2008")


if __name__ == "__main__":
    main()
