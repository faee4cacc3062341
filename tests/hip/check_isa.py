#!/usr/bin/env python3
"""Instruction-level check of the hip backend's device code (no GPU needed).

    check_isa.py LLVM_OBJDUMP LLVM_READELF LIBRARY [--arch gfx90a ...]

Finds every AMDGPU code object in LIBRARY (a static library, shared object or object file:
each translation unit embeds a clang offload bundle, `__CLANG_OFFLOAD_BUNDLE__`), reads the
kernels' metadata (llvm-readelf --notes: private segment size, spills, dynamic stack) and
disassembles them (llvm-objdump -d --mcpu=<gfx>). Then each rule below must hold for every
architecture asked for (default: every one found):
  - the kernels it names exist,
  - their mainloops run on the matrix cores: at least `min` v_mfma instructions,
  - they use no scratch (private) memory: .private_segment_fixed_size 0, no dynamic stack,
    and no scratch_* / buffer_* access to the private segment in their code (a register
    array spilled to memory or indexed at run time would show up here). Spills that stay
    in registers (SGPRs into VGPR lanes, VGPRs into AGPRs on gfx90a+) are reported, not
    failed: they cost instructions, not memory traffic.
Every other hip kernel is listed with its counts, and fails if it has scratch. A rule that
matches no kernel fails, so a renamed kernel cannot make the check pass vacuously.
"""
import argparse
import os
import re
import struct
import subprocess
import sys
import tempfile

# (what, kernel name pattern, minimum v_mfma count in the kernel)
RULES = [
    ("GEMM mainloop on MFMA", r"gemm_mfma_kernel", 16),
    ("flash attention forward on MFMA", r"flash_mfma_kernel", 16),
    ("conv2d implicit GEMM on MFMA", r"implicit_gemm_mfma_kernel", 16),
]
# The processors with v_mfma_f32_32x32x8{bf16_1k,f16}; on others the MFMA kernels are
# empty stubs the records refuse at run time, and only the scratch rule applies.
MFMA_ARCHS = {"gfx90a", "gfx940", "gfx941", "gfx942"}
MAGIC = b"__CLANG_OFFLOAD_BUNDLE__"
# Private-segment (scratch) accesses: flat scratch instructions, or MUBUF with the scratch
# resource (s[0:3] by convention, "off" vaddr + soffset forms).
SCRATCH = re.compile(r"^\s*(scratch_(load|store)\w*|buffer_(load|store)\w*\s.*s\[0:3\])")


def code_objects(data):
    """[(gfx, bytes)] of every amdgcn entry of every offload bundle in `data`."""
    out, pos = [], 0
    while True:
        start = data.find(MAGIC, pos)
        if start < 0:
            return out
        (count,) = struct.unpack_from("<Q", data, start + len(MAGIC))
        cursor = start + len(MAGIC) + 8
        end = start + len(MAGIC)
        for _ in range(count):
            offset, size, triple_len = struct.unpack_from("<QQQ", data, cursor)
            cursor += 24
            triple = data[cursor:cursor + triple_len].decode()
            cursor += triple_len
            end = max(end, start + offset + size)
            if "amdgcn" in triple and size > 0:
                gfx = triple.rsplit("-", 1)[-1].split(":")[0]
                out.append((gfx, data[start + offset:start + offset + size]))
        pos = max(end, cursor)


def kernel_metadata(readelf, path):
    """{symbol: {field: value}} from the code object's AMDGPU metadata note."""
    text = subprocess.run([readelf, "--notes", path], check=True, capture_output=True, text=True).stdout
    kernels, current = {}, None
    for line in text.splitlines():
        m = re.match(r"\s*-?\s*\.(\w+):\s+(\S+)\s*$", line)
        if not m:
            continue
        key, value = m.groups()
        if key == "agpr_count" and line.lstrip().startswith("- "):
            current = {}
        if current is None:
            continue
        current[key] = value
        if key == "symbol":
            kernels[value[:-3] if value.endswith(".kd") else value] = current
        if key == "wavefront_size":
            current = None if "symbol" in current else current
    return kernels


def disassembly(objdump, gfx, path):
    """{symbol: [instruction lines]}"""
    text = subprocess.run([objdump, "-d", f"--mcpu={gfx}", path], check=True, capture_output=True, text=True).stdout
    funcs, name = {}, None
    for line in text.splitlines():
        m = re.match(r"^[0-9a-f]+ <(\S+)>:", line)
        if m:
            name = m.group(1)
            funcs[name] = []
        elif name and line.strip():
            funcs[name].append(line)
    return funcs


def demangle(name):
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except OSError:
        return name


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("objdump")
    parser.add_argument("readelf")
    parser.add_argument("library")
    parser.add_argument("--arch", action="append", help="architectures that must be present (default: all found)")
    args = parser.parse_args()
    with open(args.library, "rb") as f:
        objects = code_objects(f.read())
    if not objects:
        print(f"ISA check failed: no AMDGPU code object in {args.library}")
        sys.exit(1)
    found = sorted({gfx for gfx, _ in objects})
    archs = args.arch or found
    failures = [f"no code object for {a} (found: {', '.join(found)})" for a in archs if a not in found]
    matched = {(what, gfx): 0 for what, _, _ in RULES for gfx in archs if gfx in MFMA_ARCHS}
    with tempfile.TemporaryDirectory() as tmp:
        for index, (gfx, blob) in enumerate(objects):
            if gfx not in archs:
                continue
            path = os.path.join(tmp, f"co{index}.{gfx}.elf")
            with open(path, "wb") as f:
                f.write(blob)
            meta = kernel_metadata(args.readelf, path)
            code = disassembly(args.objdump, gfx, path)
            for symbol, fields in sorted(meta.items()):
                body = code.get(symbol, [])
                mfma = sum(1 for l in body if re.search(r"\bv_mfma_", l))
                scratch_ops = [l.strip() for l in body if SCRATCH.search(l)]
                private = int(fields.get("private_segment_fixed_size", "0"))
                vgpr_spills = int(fields.get("vgpr_spill_count", "0"))
                sgpr_spills = int(fields.get("sgpr_spill_count", "0"))
                dynamic = fields.get("uses_dynamic_stack", "false") == "true"
                uses_scratch = private or dynamic or scratch_ops
                rules = [(what, minimum) for what, pattern, minimum in RULES
                         if gfx in MFMA_ARCHS and re.search(pattern, symbol)]
                verdict = "ok"
                for what, minimum in rules:
                    matched[(what, gfx)] += 1
                    if mfma < minimum:
                        failures.append(f"{what}: {demangle(symbol)} ({gfx}) has {mfma} v_mfma, expected >= {minimum}")
                        verdict = "FAIL"
                if uses_scratch:
                    failures.append(f"{demangle(symbol)} ({gfx}) uses scratch: private segment {private} B, "
                                    f"dynamic stack {dynamic}, "
                                    f"{scratch_ops[0] if scratch_ops else 'no scratch instruction'}")
                    verdict = "FAIL"
                print(f"{verdict:4} {gfx:7} v_mfma x{mfma:<4} scratch {private:>4} B  "
                      f"spills v{vgpr_spills:<3} s{sgpr_spills:<3} "
                      f"vgpr {fields.get('vgpr_count', '?'):>3} agpr {fields.get('agpr_count', '?'):>3} "
                      f"lds {fields.get('group_segment_fixed_size', '?'):>6} B  {demangle(symbol)[:100]}")
    for (what, gfx), count in sorted(matched.items()):
        if count == 0:
            failures.append(f"{what}: no {gfx} kernel matches")
    if failures:
        print("\n".join(["", "ISA check failed:"] + failures))
        sys.exit(1)
    print(f"ISA check passed: {len(RULES)} rules on {', '.join(archs)}; no hip kernel uses scratch memory")


if __name__ == "__main__":
    main()
