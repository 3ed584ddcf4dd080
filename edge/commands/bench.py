"""`gemma3n-edge bench DIR [--device pixel8|s24] [--json F]`: sizes, decode physics, phone memory budget.

Reads the artifact directory only (nothing runs): artifact sizes next to Google's bundle of
the same shape, the bytes one decoded token moves, and per phone what stays resident versus
memory-mapped and the decode speed its memory bandwidth allows, with every assumption and
its source printed. Measured speeds on this machine: tools/bench.py.
"""

from __future__ import annotations

import argparse
import json

NAME = "bench"
HELP = "estimate a phone's memory budget and decode bound for an artifact directory or any .litertlm (sizes, bytes per token)"


def configure(p: argparse.ArgumentParser) -> None:
    from edge.bench import DEVICES

    p.add_argument("dir", metavar="DIR", help="artifact directory (manifest.json, .tflite files), or any "
                   ".litertlm bundle (Google's, litert-torch's, ours) to compare")
    p.add_argument("--device", choices=sorted(DEVICES), action="append",
                   help="phone to estimate for (repeatable; default: all known phones)")
    p.add_argument("--bandwidth-gbs", type=float, default=None,
                   help="override the phone's memory bandwidth (GB/s, 1e9 bytes) in the decode bound")
    p.add_argument("--json", metavar="F", default=None, help="also write the estimate as JSON")


def _gb(n: float) -> str:
    return f"{n / 1e9:.3f} GB"


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edge.bench import DEVICES, compare_to_google, component_sizes, decode_traffic, device_budget, read_layout
    from edge.errors import UserError
    from edge.fileio import atomic_write

    if args.bandwidth_gbs is not None and args.bandwidth_gbs <= 0:
        raise UserError(f"--bandwidth-gbs {args.bandwidth_gbs}: must be positive")
    from edge.format.litertlm import is_litertlm
    from edge.format.manifest_verify import load_manifest

    if not is_litertlm(args.dir):  # a bundle's structure is checked as it is read
        load_manifest(args.dir)  # checksums, signatures and flatbuffer structure, before any file is read for numbers
    layout = read_layout(args.dir)  # once: a bundle's sections are checked as they are read
    sizes = component_sizes(layout)
    traffic = decode_traffic(layout)
    devices = []
    for name in args.device or sorted(DEVICES):
        dev = DEVICES[name]
        if args.bandwidth_gbs is not None:
            dev = replace(dev, bandwidth_bytes_per_s=args.bandwidth_gbs * 1e9,
                          memory=f"{args.bandwidth_gbs} GB/s given with --bandwidth-gbs", caveat="user-supplied")
        devices.append(device_budget(layout, dev))
    google = compare_to_google(sizes)

    _print_sizes(args.dir, sizes, google)
    _print_traffic(traffic)
    for b in devices:
        _print_device(b)
    if args.json:
        doc = {"artifacts": str(args.dir), "sizes": sizes, "google_bundle": google,
               "decode_traffic": traffic.to_dict(), "devices": devices}
        atomic_write(args.json, json.dumps(doc, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def _print_sizes(directory, sizes: dict, google: dict | None) -> None:
    print(f"artifacts in {directory}:")
    for name, c in sizes["components"].items():
        print(f"  {name:<24} {_gb(c['bytes'])}  ({', '.join(c['files'])})")
    print(f"  {'total (no bundle)':<24} {_gb(sizes['artifacts_total_bytes'])}")
    if sizes["bundle_bytes"]:
        print(f"  {'model.litertlm':<24} {_gb(sizes['bundle_bytes'])}")
    if google:
        print(f"  Google's {google['google']['file']}: {_gb(google['google']['bytes'])}; ours ({google['ours_is']}) "
              f"is {google['ratio_to_google']:.2f}x")


def _print_traffic(traffic) -> None:
    print(f"\nbytes read per decoded token (context {traffic.context}):")
    print(f"  decoder weights (decode signature)  {_gb(traffic.decoder_weight_bytes)}")
    print(f"  embedding row + PLE row             {traffic.embedding_row_bytes + traffic.ple_row_bytes:,.0f} B")
    print(f"  KV caches read (full context)       {_gb(traffic.kv_read_bytes)}  (+ {_gb(traffic.kv_write_bytes)} written)")
    print(f"  total read                          {_gb(traffic.read_bytes)}")


def _print_device(b: dict) -> None:
    """One phone's budget: its assumptions and their sources, what stays resident, the decode bound."""
    d = b["device"]
    print(f"\n{d['label']}: {d['ram_bytes'] / 1e9:.0f} GB RAM, {d['bandwidth_bytes_per_s'] / 1e9:.1f} GB/s")
    print(f"  assumption: {d['memory']}")
    for s in d["sources"]:
        print(f"  source:     {s}")
    print(f"  caveat:     {d['caveat']}")
    print(f"  resident:   {_gb(b['resident_total_bytes'])} ({b['resident_share_of_ram']:.0%} of RAM)")
    for k, v in b["resident_bytes"].items():
        print(f"    {k:<54} {_gb(v)}")
    print(f"  mmapped:    {_gb(b['mmapped_total_bytes'])} (tables: a row per token is paged in)")
    dec = b["decode"]
    line = f"  decode bound: {dec['bound_tok_s']:.1f} tok/s"
    if dec["google_published_cpu"]:
        line += (f"  (Google's published CPU decode {dec['google_published_cpu']['decode_tok_s']} tok/s = "
                 f"{dec['google_fraction_of_bound']:.0%} of it)")
    print(line)
    print(f"  not counted: {b['not_counted']}")
