#!/usr/bin/env python3
"""Instruction-level check of the cuda backend's device code (no GPU needed).

    check_sass.py CUOBJDUMP LIBRARY

Disassembles every cubin in LIBRARY (cuobjdump -sass) and checks each rule below: the
kernels it names exist for the architecture, run their matrix products on the tensor
cores (HGMMA = wgmma on sm_90a, HMMA = mma.sync), and never touch local memory (LDL/STL:
a register array spilled or indexed at run time). A rule that matches no kernel fails, so
a renamed kernel cannot make the check pass vacuously.
"""
import re
import subprocess
import sys

# (what, kernel name pattern, architecture, instruction that must appear)
RULES = [
    ("sm_90a GEMM on wgmma", r"gemm_sm90", "sm_90a", "HGMMA"),
    ("sm_80 GEMM on mma.sync", r"gemm_sm80_kernel", "sm_80", "HMMA"),
    ("sm_80 GEMM on mma.sync, as built for sm_90a", r"gemm_sm80_kernel", "sm_90a", "HMMA"),
    ("sm_80 flash attention forward on mma.sync", r"flash_forward_kernel", "sm_80", "HMMA"),
    ("sm_80 flash attention forward, as built for sm_90a", r"flash_forward_kernel", "sm_90a", "HMMA"),
    ("sm_90a flash attention forward on wgmma", r"flash_sm90_kernel", "sm_90a", "HGMMA"),
]
LOCAL_MEMORY = re.compile(r"\b(LDL|STL)(\.\S+)?\s")


def functions(sass):
    """{(arch, mangled name): [instruction lines]} from cuobjdump -sass output."""
    out, arch, name = {}, None, None
    for line in sass.splitlines():
        m = re.match(r"\s*code for (sm_\w+)", line)
        if m:
            arch, name = m.group(1), None
            continue
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            name = m.group(1)
            out[(arch, name)] = []
            continue
        if name and "/*" in line:
            out[(arch, name)].append(line)
    return out


def main():
    cuobjdump, library = sys.argv[1], sys.argv[2]
    sass = subprocess.run([cuobjdump, "-sass", library], check=True, capture_output=True, text=True).stdout
    funcs = functions(sass)
    failures = []
    for what, pattern, arch, instruction in RULES:
        matched = [(n, body) for (a, n), body in funcs.items() if a == arch and re.search(pattern, n)]
        if not matched:
            failures.append(f"{what}: no {arch} kernel matches /{pattern}/")
            continue
        for name, body in matched:
            count = sum(instruction in line for line in body)
            local = [l.strip() for l in body if LOCAL_MEMORY.search(l)]
            verdict = "ok" if count and not local else "FAIL"
            print(f"{verdict:4} {arch:7} {instruction}x{count:<5} LDL/STL x{len(local):<3} {name[:110]}")
            if not count:
                failures.append(f"{what}: {name} ({arch}) has no {instruction}")
            if local:
                failures.append(f"{what}: {name} ({arch}) uses local memory: {local[0]}")
    if failures:
        print("\n".join(["", "SASS check failed:"] + failures))
        sys.exit(1)
    print(f"SASS check passed: {len(RULES)} rules")


if __name__ == "__main__":
    main()
