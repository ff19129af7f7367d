"""``qbscale run``: normalise a store (or the published code's pickles) and print metrics."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click

from qbscale.config import METHODS
from qbscale.storage.durability.atomic import held

from .method_options import method_kwargs, method_options
from .options import (
    Command,
    InputPath,
    OutputPath,
    bank_sample,
    bank_sample_option,
    check_output_file,
    compute_options,
    k_option,
    library_errors,
    quiet_option,
    seed_option,
    topk_notice,
    write_json,
)
from .run_outputs import check_hits, hits_option, save_hits, summary_without_truth

COLUMNS = ("R1", "R5", "R10", "R50", "MedR", "MeanR", "geometric_mean_R1-R5-R10")
HEADERS = ("R@1", "R@5", "R@10", "R@50", "MedR", "MeanR", "geom")


#: the columns added with several positives per query
POSITIVE_COLUMNS = ("MRR", "mAP")


def format_table(rows: list[dict[str, Any]]) -> str:
    """Fixed-width table of rounded metric rows (the value column is named after
    the method's swept parameter: beta, alpha or kc); MRR and mAP too when the
    rows have them (several positives per query)."""
    param = next((row["param"] for row in rows if row.get("param")), "beta")
    width = max(8, *(len(row["method"]) + 1 for row in rows))
    extra = tuple(c for c in POSITIVE_COLUMNS if all(c in row for row in rows))
    head = f"{'method':<{width}}{param:>6}" + "".join(f"{h:>8}" for h in (*HEADERS, *extra))
    lines = [head]
    for row in rows:
        beta = "-" if row["beta"] is None else f"{row['beta']:g}"
        lines.append(f"{row['method']:<{width}}{beta:>6}"
                     + "".join(f"{row[c]:>8.1f}" for c in (*COLUMNS, *extra)))
    return "\n".join(lines)


#: what each direction's figures are of
DIRECTION_TITLES = {"t2v": "t2v: test queries -> gallery (text -> video)",
                    "v2t": "v2t: gallery items -> test queries (video -> text)"}


@click.command(cls=Command)
@click.argument("stores", nargs=-1, type=InputPath())
@click.option("--beta", default=None,
              help="Inverse temperature (is, dis, dual-is; default 20); several as 10,20,30 "
                   "(one pass for all).")
@k_option
@click.option("--method", type=click.Choice(METHODS), default="dis", show_default=True)
@click.option("--topk", type=click.IntRange(min=0), default=0,
              help="Save the K best gallery items per query.")
@click.option("--json", "json_path", type=OutputPath("JSON file"), help="Write metrics as JSON.")
@hits_option
@click.option("--save-scores", is_flag=True, help="Write the normalised matrix into the store.")
@click.option("--save-ranks", is_flag=True, help="Write per-query ranks into the store.")
@click.option("--resume", is_flag=True,
              help="Keep finished row blocks if this run is interrupted (Ctrl-C, SIGTERM, "
                   "an error), and continue an interrupted --resume run of the same settings "
                   "in STORE, computing only the row blocks it had not finished.  Without "
                   "it an interrupted run leaves nothing in STORE.")
@bank_sample_option
@seed_option
@compute_options
@quiet_option
@click.option("--sims_train_test_path", "--sims-train-test-path", "bank_pkl",
              type=InputPath(exists=True, dir_okay=False),
              help="Flag of the paper's published code (dynamic_inverted_softmax.py): the "
                   "querybank x gallery similarity pickle, instead of STORE.")
@click.option("--sims_test_path", "--sims-test-path", "test_pkl",
              type=InputPath(exists=True, dir_okay=False),
              help="Flag of the paper's published code: the test query x gallery similarity "
                   "pickle.")
@click.option("--test_query_masks_path", "--test-query-masks-path", "mask_pkl",
              type=InputPath(exists=True, dir_okay=False),
              help="Flag of the paper's published code: the test query mask pickle.")
@click.option("--queries-per-item", "queries_per_item", type=click.IntRange(min=1), metavar="N",
              help="With the published code's pickles: query i belongs to gallery item i // N "
                   "(default: queries / gallery).  A STORE keeps the ground truth it was "
                   "ingested with.")
@click.option("--gt-index", "gt_index", type=InputPath(exists=True, dir_okay=False),
              metavar="FILE",
              help="With the published code's pickles: the ground-truth gallery index of every "
                   "query (.npy/.pkl of ints), instead of --queries-per-item.")
@click.option("--normaliser", "normaliser_path", metavar="NORM.zarr", type=InputPath(),
              help="A normaliser from `qbscale fit`: skip the bank stage (its settings "
                   "are the run's; options given must match them).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]), default="text",
              show_default=True,
              help="markdown: the paper's table (| model | R@1 | R@5 | R@10 | MdR | Geom |) "
                   "with mean(std) cells over the STORES.")
@click.option("--label", default="model", show_default=True,
              help="The model's name in the tables of several STORES.")
@click.option("--direction", type=click.Choice(("t2v", "v2t", "both")), default="t2v",
              show_default=True,
              help="t2v: the store's queries against its gallery; v2t: every gallery item "
                   "against the test queries (its positives: the queries of that item; "
                   "masked queries are no competitors), read from the same matrix; both: "
                   "t2v then v2t.  v2t normalises with the store's --v2t-bank (ingest); "
                   "without one it gives the baseline alone.")
@method_options
@library_errors
def run(stores: tuple[str, ...], beta: str, k: int, method: str, topk: int,
        json_path: str | None, hits_path: str | None, save_scores: bool, save_ranks: bool,
        resume: bool, bank_sample_text: str | None, seed: int,
        scheduler: str, workers: int | None, quiet: bool,
        bank_pkl: str | None, test_pkl: str | None, mask_pkl: str | None,
        queries_per_item: int | None, gt_index: str | None, fmt: str,
        label: str, direction: str, dynamic: bool, gallery_bank: str | None,
        normaliser_path: str | None, **method_opts: Any) -> None:
    """Querybank-normalise STORE and print retrieval metrics before and after.

    STORE is a store written by `qbscale ingest`.  Alternatively give the
    similarity pickles of the paper's published code with its own flags,
    --sims_train_test_path and --sims_test_path.  With
    several STORES (e.g. three training seeds of a model), each store's
    figures, then their mean(std) over the stores.
    """
    from qbscale.api import run as run_api
    from qbscale.config import parse_values

    check_output_file(json_path)
    given = {"beta": None if beta is None else parse_values(beta), "k": k, "method": method,
             "dynamic": dynamic, **method_kwargs(method, method_opts)}
    check_hits(hits_path, topk, given, len(stores))
    given.update(bank_sample=bank_sample(bank_sample_text), seed=seed)
    if direction == "v2t" and (topk or hits_path or save_scores or save_ranks or resume
                               or normaliser_path):
        raise click.UsageError("--direction v2t gives metrics only: --topk, --hits, "
                               "--save-scores, --save-ranks, --resume and --normaliser are "
                               "for t2v (with --direction both they apply to t2v)")
    if direction != "t2v" and gallery_bank:
        raise click.UsageError("--gallery-bank (dual-is) is for --direction t2v")
    if direction != "t2v":
        return _directions(stores, direction, given, fmt, label, json_path, bank_pkl,
                           test_pkl, mask_pkl, scheduler, workers, quiet, topk, hits_path,
                           save_scores, save_ranks, resume, normaliser_path)
    results = []
    one = len(stores) <= 1 and fmt != "markdown"
    # the hits and --json files are written before the store's results are replaced,
    # and renamed into place after: a failure of either keeps every earlier output
    with held():
        for store in stores or (None,):
            settings, norm = given, None
            if normaliser_path:
                from .fit import given_settings, run_settings

                norm, settings = run_settings(normaliser_path, store,
                                              given_settings(click.get_current_context(), given))
            with _target(store, bank_pkl, test_pkl, mask_pkl,
                         save_scores or save_ranks or topk > 0, scheduler,
                         (queries_per_item, gt_index)) as target:
                results.append(run_api(
                    target, scheduler=scheduler, num_workers=workers, topk=topk,
                    save_scores=save_scores, save_ranks=save_ranks, progress=not quiet,
                    resume=resume, gallery_bank=gallery_bank, normaliser=norm,
                    before_publish=_outputs(hits_path, json_path if one else None, target),
                    **settings))
                topk_notice(topk, results[-1].n_gallery)
        if not one:
            _several(list(stores) or [str(test_pkl)], results, fmt, label, json_path)
    if not one:
        return
    result = results[0]
    if not result.has_ground_truth:
        click.echo(summary_without_truth(result, stores[0] if stores else None, hits_path,
                                         save_scores))
    else:
        click.echo(format_table(result.table()))
    if result.config.normalises and result.has_ground_truth:
        click.echo(f"normalised rows: {normalised_rows(result)}; activation set: "
                   f"{result.activation_size} of {result.n_gallery} gallery items")
    sample = result.config.bank_sample
    if sample is not None:
        what = f"{sample} rows" if isinstance(sample, int) else f"{sample:g} of its rows"
        click.echo(f"querybank sample: {what}, seed {result.config.seed}")
    click.echo(f"time: {result.seconds:.2f} s")
    if resume:
        done = result.extra["resume"]
        click.echo(f"resumed: {done['reused']} of {done['row_blocks']} row blocks were "
                   f"already done; computed {done['computed']}")
        if done.get("rejected"):
            click.echo(f"notice: {len(done['rejected'])} finished row block(s) had missing, "
                       f"damaged or moved chunks and were computed again: "
                       f"{', '.join(map(str, done['rejected']))}")


def _directions(stores: tuple[str, ...], direction: str, given: dict[str, Any], fmt: str,
                label: str, json_path: str | None, bank_pkl: str | None, test_pkl: str | None,
                mask_pkl: str | None, scheduler: str, workers: int | None, quiet: bool,
                topk: int, hits_path: str | None, save_scores: bool, save_ranks: bool,
                resume: bool, normaliser_path: str | None) -> None:
    """``--direction v2t`` or ``both``: each direction's figures, side by side in
    the markdown table."""
    from qbscale.analysis import tables
    from qbscale.api import run as run_api

    wanted = ("t2v", "v2t") if direction == "both" else ("v2t",)
    results: dict[str, list[Any]] = {d: [] for d in wanted}
    names = list(stores) or [str(test_pkl)]
    with held():
        for store in stores or (None,):
            with _target(store, bank_pkl, test_pkl, mask_pkl,
                         save_scores or save_ranks or topk > 0, scheduler) as target:
                for d in wanted:
                    settings = given if d == "t2v" else _reverse_settings(target, given)
                    outputs: dict[str, Any] = dict(
                        topk=topk, save_scores=save_scores, save_ranks=save_ranks,
                        resume=resume) if d == "t2v" else {}
                    norm = None
                    if d == "t2v" and normaliser_path:
                        from .fit import given_settings, run_settings

                        norm, settings = run_settings(normaliser_path, store, given_settings(
                            click.get_current_context(), given))
                    results[d].append(run_api(
                        target, scheduler=scheduler, num_workers=workers, progress=not quiet,
                        direction=d, normaliser=norm,
                        before_publish=_outputs(hits_path, None, target) if d == "t2v"
                        else None, **outputs, **settings))
        for d in wanted:
            from .run_outputs import check_all_have_truth

            check_all_have_truth(names, results[d])
        summaries = {d: tables.summarise(results[d]) for d in wanted}
        if fmt == "markdown":
            click.echo(tables.markdown_directions(summaries, label))
        else:
            for d in wanted:
                click.echo(DIRECTION_TITLES[d])
                if len(results[d]) == 1:
                    click.echo(format_table(results[d][0].table()))
                    if results[d][0].config.normalises:
                        click.echo(f"normalised rows: {normalised_rows(results[d][0])}; "
                                   f"activation set: {results[d][0].activation_size} of "
                                   f"{results[d][0].n_gallery} gallery items")
                else:
                    click.echo(f"mean(std) over {len(results[d])} stores\n"
                               f"{tables.text(summaries[d])}")
                first = results[d][0]
                if d == "v2t" and not first.config.normalises and given["method"] != "none":
                    click.echo("no v2t querybank in the store (qbscale ingest --v2t-bank): the "
                               "baseline alone")
        click.echo(f"time: {sum(r.seconds for d in wanted for r in results[d]):.2f} s")
        if json_path:
            write_json(json_path, "run", {d: [{"store": name, **r.to_dict()} for name, r in
                                              zip(names, results[d], strict=True)]
                                          for d in wanted})


def _reverse_settings(target: Any, given: dict[str, Any]) -> dict[str, Any]:
    """The run's settings in direction v2t: the same, or the baseline alone
    when there is no v2t querybank."""
    from qbscale.storage.stores.directions import stored_bank
    from qbscale.storage.stores.store import open_experiment

    experiment = target if not isinstance(target, (str, Path)) else open_experiment(target)
    if stored_bank(experiment) is not None:
        return given
    return {"method": "none"}


def _outputs(hits_path: str | None, json_path: str | None,
             target: Any) -> Callable[[Any], None]:
    """What writes a run's hits file and ``--json`` (each beside its target, renamed
    into place when the command's :func:`~qbscale.storage.durability.atomic.held` block ends)."""

    def write(result: Any) -> None:
        save_hits(hits_path, result, target)
        if json_path:
            write_json(json_path, "run", result.to_dict())

    return write


def _several(names: list[str], results: list[Any], fmt: str, label: str,
             json_path: str | None) -> None:
    """Each store's figures, then the mean(std) rows (:mod:`qbscale.analysis.tables`)
    and the ``--json`` of them all."""
    from qbscale.analysis import tables

    from .run_outputs import check_all_have_truth

    check_all_have_truth(names, results)

    summary = tables.summarise(results)
    if fmt == "markdown":
        click.echo(tables.markdown(summary, label))
    else:
        for name, result in zip(names, results, strict=True):
            click.echo(f"{name}\n{format_table(result.table())}")
        click.echo(f"mean(std) over {len(results)} stores (population std, as the paper's "
                   f"tables)\n{tables.text(summary)}")
    if json_path:
        stores = [{"store": name, **r.to_dict()} for name, r in zip(names, results, strict=True)]
        write_json(json_path, "run", {"stores": stores,
                                      "summary": {"ddof": tables.DDOF, "rows": summary}})


def normalised_rows(result: Any) -> str:
    """``"72.9% of 4000"``, or ``"75.0% of 3600 evaluated (400 masked)"``: the share
    of the rows the metrics count, over that many rows."""
    total = int(result.normalised.size)
    evaluated = total if result.mask is None else int(result.mask.sum())
    share = f"{100 * result.normalised_share:.1f}%"
    if evaluated == total:
        return f"{share} of {total}"
    return f"{share} of {evaluated} evaluated ({total - evaluated} masked)"


@contextlib.contextmanager
def _target(store: str | None, bank_pkl: str | None, test_pkl: str | None,
            mask_pkl: str | None, saving: bool, scheduler: str,
            truth: tuple[int | None, str | None] = (None, None)) -> Iterator[Any]:
    """What to run on: the STORE, or the published code's pickles (in memory for the
    threaded scheduler; for worker processes, ingested into a temporary store),
    their ground truth from ``truth`` (``--queries-per-item``, ``--gt-index``)."""
    qpi, gt_path = truth
    if qpi is not None and gt_path is not None:
        raise click.UsageError("give --queries-per-item or --gt-index, not both")
    seed = bank_pkl or test_pkl or mask_pkl
    if store and (qpi is not None or gt_path is not None):
        raise click.UsageError("--queries-per-item and --gt-index go with the published "
                               "code's pickles: a STORE keeps the ground truth it was "
                               "ingested with")
    if store and seed:
        raise click.UsageError("give either STORE or the published code's pickles "
                               "(--sims_train_test_path, --sims_test_path), not both")
    if not seed:
        if not store:
            raise click.UsageError("give a STORE or the published code's pickles "
                                   "(--sims_train_test_path and --sims_test_path); a STORE "
                                   "is written by `qbscale ingest`")
        yield store
        return
    if not (bank_pkl and test_pkl):
        raise click.UsageError("--sims_train_test_path and --sims_test_path go together")
    if saving:
        raise click.UsageError("--save-scores/--save-ranks/--topk need a store to save "
                               "into: run `qbscale ingest` first")
    if scheduler in ("threads", "synchronous", "sync"):
        from qbscale.storage.inputs.readers import open_matrix, read_array
        from qbscale.storage.stores.store import MASK_LABEL, in_memory

        bank, test = read_array(bank_pkl), read_array(test_pkl)
        if truth == (None, None):
            _check_grouping(test, Path(test_pkl).name)
        gt = None
        if gt_path is not None:
            gt_src = open_matrix(gt_path, "gt_index")
            gt = (gt_src.read(), gt_src.label("gt_index"))
        mask_src = open_matrix(mask_pkl, "masks") if mask_pkl else None
        # named as ingest names them: one message for a bad mask on every path
        yield in_memory(bank, test, None if mask_src is None else mask_src.read(),
                        queries_per_item=qpi, gt_index=None if gt is None else gt[0],
                        names=(Path(bank_pkl).name, Path(test_pkl).name),
                        mask_name=MASK_LABEL if mask_src is None else mask_src.label(MASK_LABEL),
                        gt_name="gt_index" if gt is None else gt[1])
        return
    from qbscale.executors import is_remote

    if is_remote(scheduler):
        raise click.UsageError("workers of a remote cluster cannot see local pickles: "
                               "`qbscale ingest` them into shared storage first")
    from qbscale.storage.inputs.readers import open_matrix
    from qbscale.storage.stores.ingest import ingest

    if truth == (None, None):
        _check_grouping(open_matrix(test_pkl, "test"), Path(test_pkl).name)
    with tempfile.TemporaryDirectory(prefix="qbscale-") as tmp:
        yield ingest(Path(tmp) / "seed.zarr", bank_pkl, test_pkl, mask_pkl, progress=False,
                     queries_per_item=qpi, gt_index=gt_path)


def _check_grouping(test: Any, name: str) -> None:
    """The seed's pickles carry no ground truth: query i belongs to gallery item
    i // (queries / gallery), so the queries must be a multiple of the gallery."""
    from qbscale.errors import InputError

    if len(test.shape) != 2 or 0 in test.shape:
        return  # refused with the other checks of the matrix
    n_queries, n_gallery = test.shape
    if n_queries < n_gallery or n_queries % n_gallery:
        raise InputError(
            f"test ({name}) has {n_queries} queries, not a positive multiple of its "
            f"{n_gallery} gallery items: give --queries-per-item N (query i belongs to item "
            "i // N) or --gt-index FILE (the ground-truth gallery index of every query)")
