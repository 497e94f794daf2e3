"""The benchmark's report: summaries per transform and the markdown tables of bench.md.
"""

from __future__ import annotations

from typing import Any

from echoimage_bench.baselines import PHASH_THRESHOLD
from echoimage_bench.colour import render_colour
from echoimage_bench.context import QueryRecord
from echoimage_bench.formatting import fmt_ms, fmt_rate, markdown_table
from echoimage_bench.metrics import TOP_K, percentile, quantiles, rate, recall_at_k
from echoimage_bench.transforms import Transform

DIAG_NOTE = ("shortlist_miss: the original was neither in the hash shortlist's first rerank_n "
              "(within max_hash_distance) nor voted by the local-feature index, so it was "
              "never re-ranked; rerank_miss: it was a candidate but scored below another "
              "image")


def per_transform_summary(recs: list[QueryRecord], transforms: list[Transform], thr: float | None
                   ) -> dict[str, dict[str, Any]]:
    """The recall and detection figures of each transform's queries (summarise_records), with the
    transform's kind."""
    out = {}
    for t in transforms:
        sub = [r for r in recs if r.transform == t.name]
        out[t.name] = summarise_records(sub, thr)
        out[t.name].update({"extra": t.extra, "quality": t.quality,
                            "description": t.description})
    return out


def summarise_records(sub: list[QueryRecord], thr: float | None) -> dict[str, Any]:
    """Recall@1/@5, detection (at thr too) and score and distance quantiles of a set of
    positive queries, EchoImage's and the pHash baseline's."""
    ranks = [r.rank for r in sub]
    hits = [r for r in sub if r.rank == 1]
    return {
        "n": len(sub),
        "echoimage": {
            "recall_at_1": recall_at_k(ranks, 1), "recall_at_5": recall_at_k(ranks, TOP_K),
            "duplicate_given_top1_correct": rate(r.top_dup for r in hits),
            "detected": rate(r.rank == 1 and r.top_dup for r in sub),
            "recall_at_calibrated_threshold": rate(r.rank == 1 and r.top_score >= thr
                                                   for r in sub) if thr is not None else None,
            "correct_top1_score": quantiles([r.top_score for r in hits]),
            "query_bytes_ms_p50": percentile([r.e2e_ms for r in sub], 50),
        },
        "phash": {
            "recall_at_1": recall_at_k([r.phash_rank for r in sub], 1),
            "recall_at_5": recall_at_k([r.phash_rank for r in sub], TOP_K),
            "detected_at_threshold": rate(r.phash_rank == 1 and r.phash_top_dist
                                          <= PHASH_THRESHOLD for r in sub),
            "truth_distance": quantiles([r.phash_truth_dist for r in sub], (0, 50, 95, 100)),
        },
    }


def run_notes(pad_info: dict[str, Any], scale_res: dict[str, Any]) -> list[str]:
    """The report's notes on how this run's figures were made (latency phase, padding)."""
    notes = ["Latency figures come from a quiet phase: decode_image, then query_image "
             "(sha256=None) timed alone; query_bytes timed end to end on the same sample."]
    if any("padding" in v for v in scale_res.values()):
        notes.append("Padding entries are derived from the catalogue's photos' rows "
                     "(bench.derived: perturbed descriptors, shifted and re-lit thumbnails, "
                     "their own hashes) and stored as real rows; they are not photos.")
    if pad_info.get("concurrent_with"):
        notes.append("Padding was built in a background process during the recall sweep "
                     "and negatives, so their per-query times (query_bytes_ms_p50 per "
                     "transform) were taken under load.")
    return notes


def _evidence_lines(ev: dict[str, Any]) -> list[str]:
    """Copy verdicts without proof, and false matches over every suite's negatives."""
    lines = [f"Copy verdicts without proof (same bytes, a hash within 5 bits or geometric "
             f"agreement), over all {ev['queries']} queries: **{ev['copies_without_proof']}**."]
    every = ev.get("all_negatives")
    if every:
        per = ", ".join(f"{k} {v['false_matches']} of {v['n']}"
                        for k, v in ev["negatives"].items())
        lines.append(f"False matches (held-out queries whose top result is called a copy) "
                     f"over every suite: **{every['false_matches']} of {every['n']}** "
                     f"({_pct(every['false_match_rate'])}; {per}).")
    return lines


def _pct(x: float | None) -> str:
    """A rate as a percentage with two decimals; an em dash for None."""
    return "—" if x is None else f"{100 * x:.2f}%"


def _hard_lines(hard: dict[str, Any]) -> list[str]:
    """The hard edits' section: the table, and the misses."""
    from echoimage_bench.hard_runner import HARD_TABLE_NOTE, hard_table, miss_lines

    return ["", "## Hard edits", "", f"{hard['entries']:,} entries searched.", "",
            hard_table(hard), "", HARD_TABLE_NOTE, "", "### Hard misses", "",
            *miss_lines(hard.get("missed", []))]


def render_markdown(result: dict[str, Any]) -> str:
    """The benchmark's markdown report: the per-transform table and summary lines."""
    d = result["dataset"]
    rows = []
    for name, r in result["transforms"].items():
        seed = r.get("seed") or {}
        seed_cell = (f"{fmt_rate(seed.get('recall_at_1'), 2)} ({seed['n']})" if seed
                     else "—")
        rows.append([name + (" (extra)" if r["extra"] else ""), r["n"],
                     fmt_rate(r["echoimage"]["recall_at_1"]),
                     fmt_rate(r["echoimage"]["recall_at_5"]),
                     fmt_rate(r["echoimage"]["duplicate_given_top1_correct"]),
                     fmt_rate(r["echoimage"]["recall_at_calibrated_threshold"]),
                     fmt_rate(r["phash"]["recall_at_1"]), fmt_rate(r["phash"]["recall_at_5"]),
                     seed_cell])
    for label, key in (("**all main**", "main"), ("**all extra**", "extra")):
        s = result["summary"][key]
        if s["n"]:
            rows.append([label, s["n"], fmt_rate(s["echoimage"]["recall_at_1"]),
                         fmt_rate(s["echoimage"]["recall_at_5"]),
                         fmt_rate(s["echoimage"]["duplicate_given_top1_correct"]),
                         fmt_rate(s["echoimage"]["recall_at_calibrated_threshold"]),
                         fmt_rate(s["phash"]["recall_at_1"]),
                         fmt_rate(s["phash"]["recall_at_5"]), ""])
    table = markdown_table(
        ["transform", "queries", "EchoImage r@1", "EchoImage r@5", "dup=True of r@1 hits",
         "r@1 at calibrated thr", "pHash r@1", "pHash r@5", "seed r@1 (subset n)"], rows)
    b, neg, cal = result["build"], result["negatives"], result["calibration"]
    st = b["storage"]
    lat = result["latency"]
    seed = result["baselines"]["seed"]
    ph = result["baselines"]["phash"]
    lines = [
        "# EchoImage benchmark", "",
        f"{result['date']} · `{' '.join(result['command'])}` · "
        f"{result['machine']['cpu_count']} CPUs, Python {result['machine']['python']}, "
        f"OpenCV {result['machine']['opencv']}, FAISS {result['machine']['faiss']}", "",
        f"Photos: {d['photos']} → catalogue {d['catalogue']} (indexed {d['indexed']}), "
        f"negatives {d['negatives']}. Queries: {d['query_photos']} catalogue photos × "
        f"{d['transforms']} transforms = {d['queries']}, JPEG q90 (jpeg30: q30, combo: q50), "
        "k=5. \"(extra)\" rows show a part of the photo (random crops, a screenshot); they "
        "are summarised apart and left out of the threshold calibration.", "",
        table, "",
        "## Summary", "",
        f"- **False-match rate** (negatives × {', '.join(neg['transforms'])}; top-1 "
        f"duplicate=True at threshold {cal['current_duplicate_threshold']}): "
        f"{fmt_rate(neg['false_match_rate'])} (n={neg['n']}); pHash (distance ≤ "
        f"{ph['threshold']}): {fmt_rate(ph['false_match_rate'])}",
        f"- **Build**: {b['indexed']} images in {b['seconds']:.1f}s = "
        f"{b['images_per_s']} images/s; CPU {b['cpu_seconds']:.1f}s "
        f"({b['cpu_ms_per_image']} ms/image, {b['workers']} workers)",
        f"- **Bytes per indexed image**: store file {_fmt_b(st['store_file_bytes_per_image'])}"
        f"; feature columns {_fmt_b(sum(st['store_columns_bytes_per_image'].values()))} ("
        + ", ".join(f"{k} {_fmt_b(v)}" for k, v in st["store_columns_bytes_per_image"].items())
        + f"); FAISS index files {_fmt_b(st['index_file_bytes_per_image'])}"
        + (" (" + ", ".join(f"{k} {_fmt_b(v / b['indexed'])}"
                            for k, v in st["index_files"].items() if not k.endswith(".json"))
           + ")" if st.get("index_files") and b["indexed"] else ""),
    ]
    for label, r in lat.items():
        name = f"catalogue ({r['entries']:,})" if label == "catalogue" else \
            f"{int(label):,} (padded, {r['entries']:,} entries)"
        lines.append(
            f"- **Latency @ {name}**, {r['queries']} queries: query_image p50 "
            f"{fmt_ms(r['query_image_ms']['p50'])} / p95 {fmt_ms(r['query_image_ms']['p95'])}; "
            f"query_bytes p50 {fmt_ms(r['query_bytes_ms']['p50'])} / p95 "
            f"{fmt_ms(r['query_bytes_ms']['p95'])}; r@1 on the sample "
            f"{fmt_rate(r['recall_at_1'])}; stage p50 "
            + ", ".join(f"{k.removesuffix('_ms')} {v:.1f}" for k, v in
                        r.get("stage_ms_p50", {}).items() if v is not None) + " ms"
            + (f"; engine catch-up delta {r['engine_delta_rows']:,} rows"
               if r.get("engine_delta_rows") else ""))
        if r.get("parts"):
            q = r["parts"]
            lines.append(
                f"  - parts of photos (extra transforms), {q['queries']} queries: query_image "
                f"p50 {fmt_ms(q['query_image_ms']['p50'])} / p95 "
                f"{fmt_ms(q['query_image_ms']['p95'])}; r@1 on the sample "
                f"{fmt_rate(q['recall_at_1'])}")
        if r.get("no_copy"):
            q = r["no_copy"]
            ratio = q["query_image_ms"]["p50"] / r["query_image_ms"]["p50"] \
                if r["query_image_ms"]["p50"] else None
            lines.append(
                f"  - no copy (held-out photos, negative transforms), {q['queries']} queries: "
                f"query_image p50 {fmt_ms(q['query_image_ms']['p50'])} / p95 "
                f"{fmt_ms(q['query_image_ms']['p95'])} ({ratio:.2f}× the whole-photo p50); "
                f"called copies {fmt_rate(q['false_match_rate'])}; rounds p50 "
                + ", ".join(f"{k} {v:.1f} ({100 * q['rounds_ran'][k]:.0f}%)"
                            for k, v in q.get("rounds_ms_p50", {}).items() if v is not None)
                + " ms (share of the queries that ran it)")
    for label, r in result["scale"].items():
        if "skipped" in r or "padding" not in r:
            lines.append(f"- **Scale {label}**: {r.get('skipped')}")
            continue
        p = r["padding"]
        how = "cached from an earlier run" if p["cached"] else "built this run" + (
            f", concurrently with the {p['built_concurrently_with']}"
            if p.get("built_concurrently_with") else "")
        lines.append(
            f"- **Padding to {int(label):,}**: {p['padding_entries']:,} derived entries "
            f"(rows derived from the photos' rows, not photos), {how}: "
            f"{p['seconds']:.0f}s for {p['generated_this_build']:,} "
            f"({p['ms_per_padding_image']} ms/image wall, {p['workers']} workers) "
            f"+ index rebuild {p['index_rebuild_seconds']:.1f}s; engine load "
            f"{r['engine_load_seconds']:.1f}s; store file {p['store_file_bytes'] / 1e9:.2f} GB")
    m = result["memory"]
    bc = m["build_children"]
    lines += [
        f"- **Peak RSS**: this process {m['self_peak_rss_mb']} MB "
        f"({m['self_peak_rss_mb_before_scale']} MB before the scale phase); build workers "
        f"{bc['max_single_child_mb']} MB each at most, {bc['max_children_total_mb']} MB "
        f"together (ru_maxrss of children: {bc['rusage_children_mb']} MB)",
        f"- **pHash NN baseline**: {ph['entries']} stored hashes, identity orientation, "
        f"p50 {fmt_ms(ph['query_ms_p50'])} per query from the decoded image",
    ]
    if not seed.get("skipped"):
        sm = seed["ms_per_catalogue_image_per_query"]["p50"]
        lines.append(
            f"- **Seed brute force** ({seed['catalogue_images']} catalogue images × "
            f"{seed['queries_per_transform']} queries per transform): {sm:.1f} ms per "
            f"catalogue image per query → ≈ {seed['extrapolated_s_per_query_at_1m']:,.0f} s "
            f"(≈ {seed['extrapolated_s_per_query_at_1m'] / 3600:.1f} h) per query at 1M "
            "images, before any download")
    nq = cal["negative_score_quantiles"] or {}
    lines += ["", "## Calibration", "",
              "- Negatives' top-1 score quantiles: "
              + ", ".join(f"{k} {v:.3f}" for k, v in nq.items()),
              f"- Threshold keeping false matches ≤ {cal['target_false_match_rate']:.0%}: "
              f"**{_fmt_thr(cal['threshold'])}** (FMR there "
              f"{fmt_rate(cal['false_match_rate_at_threshold'])}); recall (top-1 correct and "
              f"score ≥ threshold) over main transforms: "
              f"**{fmt_rate(cal['recall_at_threshold_main'])}**",
              f"- Zero-false-match threshold {_fmt_thr(cal['zero_false_match_threshold'])}: "
              f"recall {fmt_rate(cal.get('recall_at_zero_false_match_main'))}",
              f"- Current `duplicate_threshold` {cal['current_duplicate_threshold']}: FMR "
              f"{fmt_rate(cal['false_match_rate_at_current'])}, main-transform detection "
              f"(top-1 correct and duplicate=True) {fmt_rate(cal['detected_at_current_main'])}",
              "", *_sweep_table(cal.get("sweep") or [])]
    if result.get("colour"):
        lines += render_colour(result["colour"])
    ev = result.get("evidence")
    if ev:
        lines += ["", *_evidence_lines(ev)]
    if "peers" in result:
        from echoimage_bench.peer_suite import render_peer_section  # (it builds on this module)

        lines += render_peer_section(result["peers"])
    if (result.get("hard") or {}).get("ran"):
        lines += _hard_lines(result["hard"])
    lines += ["", "## Misses", "", *_miss_lines(result),
              "", "## Notes", "", *[f"- {n}" for n in result.get("notes", [])],
              "", "## Phases", "",
              ", ".join(f"{k} {v:.0f}s" for k, v in result["phases"].items()), ""]
    return "\n".join(lines)


def _miss_lines(result: dict[str, Any]) -> list[str]:
    """One line per transform with misses: where the original was lost, and an example."""
    out = []
    for name, r in result["transforms"].items():
        f = r.get("failures") or {}
        n_miss = f.get("shortlist_miss", 0) + f.get("rerank_miss", 0) + f.get("undiagnosed", 0)
        if not n_miss:
            continue
        line = (f"- {name}: {n_miss} of {r['n']} top-1 misses; never re-ranked "
                f"{f.get('shortlist_miss', 0)}, re-ranked but outscored {f.get('rerank_miss', 0)}")
        ex = next((e for e in f.get("examples", []) if e.get("top1")), None)
        if ex:
            t1, tr = ex["top1"], ex.get("truth")
            line += (f". E.g. {ex['photo']}: original at hash distance "
                     f"{ex.get('truth_hash_distance')} (hash rank {ex.get('truth_hash_rank')}"
                     f", {ex.get('truth_votes', '—')} votes); top-1 {t1['url']} score "
                     f"{t1['score']:.2f} (ssim {t1['ssim']:.2f}, {t1['orb_inliers']} inliers, "
                     f"hash {t1['hash_distance']})")
            if tr:
                line += (f"; original ranked {ex['rank']} with score {tr['score']:.2f} "
                         f"(ssim {tr['ssim']:.2f}, {tr['orb_inliers']} inliers)")
        out.append(line)
    return out or ["- none"]


def _fmt_b(n: float | None) -> str:
    return "—" if n is None else f"{n:,.0f} B"


def _sweep_table(sweep: list[dict[str, Any]]) -> list[str]:
    if not sweep:
        return []
    rows = [[f"{r['threshold']:.2f}", fmt_rate(r["false_match_rate"]),
             fmt_rate(r["recall_main"]), fmt_rate(r["recall_extra"])] for r in sweep]
    return ["Verdict at other thresholds (score >= threshold; recall = top-1 correct and "
            "over the threshold):", "",
            markdown_table(["threshold", "false-match rate", "recall main", "recall extra"],
                           rows)]


def _fmt_thr(t: float | None) -> str:
    return "—" if t is None else f"{t:.4f}"
