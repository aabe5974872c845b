"""The Python API: ``extract``, ``list_layers`` (:mod:`actextract.model.discover`), ``open_store``.

``extract`` decides everything once (model, source, layers, shapes, store layout), refuses bad
input before anything is written, then hands the stages to :func:`actextract.extraction.engine.run`.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from actextract.core.devices import resolve_device
from actextract.core.names import names_option
from actextract.data.decode import DeviceDecoder
from actextract.data.inputs import Inputs, SampleShape, attention_mask, tokens_attribute
from actextract.data.loaders import check_repeatable
from actextract.data.source import Preprocess, Source, make_loader, open_dataset
from actextract.data.streams import stream_batches
from actextract.errors import OptionError, option
from actextract.extraction import distributed
from actextract.extraction.engine import (
    RunOptions,
    Summary,
    compiled,
    merge_summaries,
    run,
)
from actextract.extraction.growth import Growth
from actextract.extraction.options import ExtractOptions
from actextract.extraction.plan import (
    choose_chunk_rows_for,
    choose_outputs,
    plan_arrays,
    plan_cut,
    provenance,
    token_rows,
    token_stats,
)
from actextract.extraction.resume import NewStore, open_run
from actextract.extraction.sink import Sink
from actextract.extraction.text import format_summary, run_report
from actextract.extraction.transfer import default_writers, ring_slots, takes_turns
from actextract.extraction.work import Shard, Work
from actextract.model.capture import build_capture
from actextract.model.discover import LayerTable, list_layers
from actextract.model.trim import Trim
from actextract.model.zoo import borrowed, load_model
from actextract.stats.accumulate import Accumulator
from actextract.stats.parts import PartWriter, accumulated, finalize
from actextract.store import (
    Store,
    check_output,
    lock,
    open_store,
)
from actextract.store.location import Location
from actextract.store.parts import summed_blocks

__all__ = ["LayerTable", "extract", "list_layers", "open_store"]

log = logging.getLogger(__name__)


def extract(model: str | nn.Module, dataset: Any, **options: Any) -> Store:
    """Run ``model`` over ``dataset`` and store the outputs of ``layers`` in a Zarr store.

    ``model``: a spec (``resnet18``, ``digits-cnn``, ``python:mod:fn``, ``hf:PATH``,
    ``hf-config:FILE``, ``timm:NAME``) or a Module. ``dataset``: a spec (``digits``,
    ``folder:PATH``, ``mnist:ROOT``, ``synthetic:N:C:H:W``, ``python:mod:fn``; ``text:FILE`` and
    ``hf-dataset:PATH`` tokenised by the model's tokenizer to ``max_length``, ``pack=True``
    joined into windows) or a Dataset whose items are a tensor, a tuple or dict of tensors, or
    ``(input, label, ...)``.
    ``layers``: names or globs (``['layer3', 'avgpool']`` or ``'conv*,layer*.**.conv2'``:
    ``*`` within one dotted level, ``**`` across levels), ``lstm[1][0]`` for an element of a
    tuple output. ``reduce``: ``'layer4=mean,encoder.**=cls'`` (mean/max pool the spatial
    axes of maps or the tokens of token layers, cls and last keep the first and last token;
    with an attention mask the real tokens only); ``layout``:
    ``'features.*=nhwc'`` overrides the layout the probe infers (nchw, nhwc, tokens, vector,
    other; :mod:`actextract.core.axes`). ``model`` is left as it was (mode, flags, device), also
    after an error.
    ``out``: a folder, a ``file://`` URL or another fsspec URL zarr opens. ``weights``: a
    state_dict (``torch.save``) or safetensors file; ``trust_checkpoint=True`` also lets it be
    a whole pickled module, whose unpickling runs code from the file.
    ``store``: the layers written in full (names or globs, also captured when not in
    ``layers``; default: every layer of ``layers``; ``"none"``: none; ``store_layers`` is its
    older name). ``stats``: aggregates
    computed on the device, ``'layer*=class-mean,class-std,channel-hist;fc1=channel-mean'``
    (:mod:`actextract.stats.accumulate`), written under ``stats/<layer>/``; ``hist_bins`` and
    ``hist_range`` (lo, hi) fix channel-hist's bins (default range: the finite values of a
    probe sample's output, or of the next samples' where it has none, widened);
    ``stats_every``: seconds between commits of the sums (what a killed run keeps).
    ``resume``: finish the store at ``out`` (same run: same model, data, layers, settings),
    computing only the row blocks not recorded done; ``shard="i/n"``: write only shard i of
    n (0-based), joining the store the first shard created; under ``torchrun`` every rank is
    its own shard. ``on_nonfinite``: ``count`` rows with NaN/Inf per layer, or ``error``.
    ``writers``: compress-and-write threads (default: 2 on CUDA; on a CPU whose cores
    torch's threads use, one per core up to 4, which take turns with the loop; else 1);
    ``host_buffers``: row blocks in the device→host ring (host memory is bounded by it;
    default: what one batch touches plus one per writer).
    ``compile``: ``torch.compile`` the capture and reductions (slow to start, faster per batch
    on a GPU; batches are padded to ``batch_size`` so that the shorter last one reuses the
    compiled code). ``decode="gpu"``: for ``folder:`` datasets on CUDA, the loader workers only
    read the files and JPEGs are decoded (nvJPEG), resized and normalised on the GPU.
    ``resize``, ``crop``, ``mean``, ``std``, ``channels``: the preprocessing, as on the
    command line (or a whole ``preprocess=Preprocess(...)``); unset steps take the model's
    defaults. Every keyword is an option of ``actextract extract`` with ``_`` for ``-``, and
    the defaults are the same (:class:`~actextract.extraction.options.ExtractOptions`).
    Returns the opened store; ``store[layer]`` is (N, *shape) in ``dtype``.
    """
    return run_extraction(ExtractOptions.from_keywords(model, dataset, **options))


def run_extraction(o: ExtractOptions) -> Store:
    """:func:`extract` with its options built and checked."""
    group = distributed.from_env()
    try:
        with lock.session():  # the store's writer lock (actextract.store.lock), however this ends
            return _extract(o, group)
    finally:
        if group is not None:
            group.close()


def _extract(o: ExtractOptions, group: Any) -> Store:
    """Check what needs the process group, load, plan, open the store, compute, seal."""
    part, join = _shard(o, group)
    lead = group.lead if group else (lambda fn: fn())
    options = RunOptions(
        resolve_device(group.device(o.device) if group else o.device),
        o.precision,
        o.channels_last,
        o.on_bad_sample,
        o.progress if group is None or group.leader else False,
    )
    if o.decode == "gpu" and options.device.type != "cuda":
        raise OptionError(
            f"--decode gpu decodes JPEGs on a CUDA device (decode='gpu'), and this run is on "
            f"{options.device}; use --device cuda (device='cuda'), or --decode cpu "
            "(decode='cpu': decoding in the loader's workers)."
        )
    location = Location.parse(o.out, o.storage_options)
    if not (o.resume or join):  # before any slow work: refuse early, touch nothing
        lead(lambda: check_output(location, o.overwrite))

    # random weights (no checkpoint) come from a fixed seed: the same model in every process
    # of a sharded, torchrun or resumed run (the caller's RNG state is left as it was)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loaded = load_model(o.model, weights=o.weights, trust_checkpoint=o.trust_checkpoint)
    source = _open(o, loaded, o.preprocess.over(loaded.preprocess))
    check_repeatable(source, resume=o.resume, shards=part.count)
    decoder = DeviceDecoder(source.preprocess, options.device) if source.encoded else None
    rows = range(min(len(source), o.limit) if o.limit else len(source))
    if len(rows) == 0:
        raise OptionError(f"dataset '{source.spec}' has no samples.")
    layers, full = names_option(o.layers), names_option(o.store)
    memory_format = torch.channels_last if o.channels_last else None
    with borrowed(loaded.module, options.device, memory_format) as module:
        cap = build_capture(
            module, [*layers, *(full or ())], model_name=loaded.spec, method=o.capture
        )
        try:
            stored, wanted = choose_outputs(cap.names, full, o.stats)
            arrays, reducer, stats_attrs, input_shape = plan_arrays(
                cap,
                source,
                rows,
                options,
                o.reduce,
                o.store_options,
                decoder,
                stored=stored,
                stats=wanted,
                hist_bins=o.hist_bins,
                hist_range=o.hist_range,
                layouts=o.layout,
            )
            tokens = tokens_attribute(input_shape, source.records)
            token_stats(stats_attrs, tokens)  # over real tokens
            arrays = token_rows(arrays, tokens)  # --reduce tokens: a row per real token
            trim = plan_cut(cap, source, rows, options, arrays, stats_attrs, tokens, decoder)
            n = 0 if source.stream is not None else len(rows)  # a stream's store grows
            attrs = {
                **provenance(loaded, source, cap.method, o.precision, options, o.batch_size),
                "stats": stats_attrs,
                **({"tokens": tokens} if tokens else {}),  # a text run's tokens/
            }
            new = NewStore(
                n,
                arrays,
                o.store_options,
                choose_chunk_rows_for(location, o, join, arrays, n, attrs["id_width"]),
                attrs,
                chunk_rows_given=o.chunk_rows is not None,
            )
            slots = ring_slots(  # refused before the store is created when too few
                o.host_buffers,
                batch_size=o.batch_size,
                chunk_rows=new.chunk_rows,
                writers=writers(o, options),
            )
            work = Work(n, o.batch_size, new.chunk_rows)
            mine = work.blocks(part)
            store = lead(
                lambda: open_run(
                    location,
                    new,
                    resume=o.resume,
                    overwrite=o.overwrite,
                    join=join,
                    blocks=mine,
                    shard=(part.index, part.count),
                )
            ) or distributed.open_shared(location)  # a rank but rank 0
            if decoder is not None:
                decoder = replace(decoder, input_shape=input_shape)
            todo, summary = _compute(
                o,
                store,
                cap,
                reducer,
                source,
                work,
                mine,
                slots,
                options,
                decoder,
                input_shape,
                group,
                trim,
            )
        finally:
            cap.close()
    _seal(store, summary, part, group, join, ran=bool(todo) or group is not None)
    store = open_store(location)  # the sealed attributes, whichever process wrote them
    if group is None:  # what this process did, for the summary it prints
        store.this_run = run_report(store, part, len(mine), len(todo), summary.as_dict())
    # the CLI echoes this summary itself and leaves out the record marked run_summary
    summary_text = format_summary(store.attrs, store.this_run)
    log.info("%s\n%s", store.location, summary_text, extra={"run_summary": True})
    return store


def writers(o: ExtractOptions, options: RunOptions) -> int:
    """The run's writer threads: as asked, else :func:`default_writers` of its device."""
    return o.writers if o.writers is not None else default_writers(options.device)


def _shard(o: ExtractOptions, group: Any) -> tuple[Shard, bool]:
    """This process's shard of the run, and whether it joins a store other processes write
    (``--shard`` given; under torchrun, rank 0 opens the store for every rank)."""
    if group is not None and o.shard is not None:
        raise OptionError(
            f"{option('shard')} {o.shard} under torchrun: every rank is already shard "
            f"RANK/WORLD_SIZE ({group.rank}/{group.world}); drop --shard."
        )
    part = Shard(group.rank, group.world) if group else Shard.parse(o.shard)
    join = group is None and part.count > 1  # independent shard processes share the store
    if join and o.overwrite:
        raise OptionError(
            f"{option('overwrite')} with {option('shard')} {part}: each shard would delete the "
            "others' work. Remove the old store first, or run one process with --overwrite."
        )
    return part, join


def _compute(
    o: ExtractOptions,
    store: Store,
    cap: Any,
    reducer: Any,
    source: Source,
    work: Work,
    mine: list[int],
    slots: int,
    options: RunOptions,
    decoder: DeviceDecoder | None,
    input_shape: SampleShape,
    group: Any,
    trim: Trim | None = None,
) -> tuple[list[int], Summary]:
    """Compute this process's row blocks not done yet (and the statistics of those not
    summed yet) through the engine: the blocks it computed, and the run's numbers."""
    specs = accumulated(store)  # the store's: a resumed run adopts its histogram edges
    done, summed = store.done(), summed_blocks(store)
    write = [b for b in mine if not done[b]]
    add = [b for b in mine if not summed[b]]
    todo = sorted({*write, *add})
    if len(todo) < len(mine):  # a resume doing its job: news, not a warning
        log.info(
            "%s: %d of this run's %d row blocks are already done; computing the other %d",
            store.location,
            len(mine) - len(todo),
            len(mine),
            len(todo),
        )
    batches = work.batches(todo)
    sums = None
    if specs and add:
        acc = Accumulator(specs, options.device, chunk_rows=store.chunk_rows, n=store.n, blocks=add)
        sums = PartWriter(store, acc, every=o.stats_every, rank=group.rank if group else None)
    pin = options.device.type == "cuda"
    if source.stream is not None:  # an iterable: read once as it comes, the store grows
        loader: Any = stream_batches(
            source, batch_size=o.batch_size, pin_memory=pin, input_shape=input_shape, limit=o.limit
        )
    else:
        loader = make_loader(
            source,
            [row for batch in batches for row in batch],  # full batches but the dataset's last
            batch_size=o.batch_size,
            num_workers=o.num_workers,
            pin_memory=pin,
            input_shape=input_shape,  # every input the probe's shape, or a bad sample
        )

    def forward(x: Inputs) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        out = cap(x)  # the row arrays, and the outputs the statistics sum
        return reducer(out, attention_mask(x)), {s.layer: out[s.layer] for s in specs}

    if o.compile:
        forward = compiled(forward, o.batch_size, options)
    try:
        with Sink(
            store,
            slots=slots,
            writers=writers(o, options),
            cuda=options.device.type == "cuda",
            turns=takes_turns(options.device),
            blocks=write,
            on_nonfinite=o.on_nonfinite,
            grow=Growth(store) if source.stream is not None else None,
        ) as sink:
            summary = run(
                loader,
                forward,
                sink,
                options,
                total=None if source.stream is not None else sum(len(b) for b in batches),
                decode=decoder,
                stats=sums,
                grad_mode=cap.grad_mode,
                trim=trim,
            )
    except KeyboardInterrupt:
        _record_stop(store, "interrupted", "interrupted (SIGINT/Ctrl-C)")
        raise
    except BaseException as e:
        _record_stop(store, "failed", f"{type(e).__name__}: {e}")
        raise
    if source.stream is not None:  # every block of the store it grew
        todo = list(range(store.n_blocks))
    return todo, summary


def _seal(store: Store, summary: Summary, part: Shard, group, join: bool, ran: bool) -> None:
    """Seal the store once every block is done: under torchrun rank 0 does it with every
    rank's summary; a shard only when it finds every block done (the last to finish). A
    process that computed nothing (``ran`` False) leaves the recorded summary as it was."""
    mine = {**summary.as_dict(), "shard": str(part)}

    def seal(summary: dict) -> None:  # the statistics' totals first: they decide "complete"
        summed = bool(store.done().all()) and finalize(store)
        store.seal("incomplete", summed=summed, **({"summary": summary} if ran else {}))

    if group is not None:
        parts = group.gather(mine)
        group.lead(lambda: seal(merge_summaries(parts)))
    elif not join or (store.done().all() and summed_blocks(store).all()):
        seal(mine)


def _record_stop(store: Store, status: str, error: str) -> None:
    """Record why the run stopped, without hiding the error itself (the disk may be full)."""
    try:
        store.update_attrs(status=status, error=error)
    except Exception as e:  # the original error is what the user must see
        log.warning("could not record status '%s' in %s: %s", status, store.location, e)


def _open(o: ExtractOptions, loaded: Any, preprocess: Preprocess) -> Source:
    """The run's source (:func:`actextract.data.source.open_dataset`), with the model's
    tokenizer for text."""
    return open_dataset(
        o.dataset,
        preprocess,
        decode=o.decode,
        tokenizer=loaded.tokenizer,
        max_length=o.max_length,
        text_field=o.text_field,
        pack=o.pack,
        num_workers=o.num_workers,  # an IterableDataset's readers
    )
