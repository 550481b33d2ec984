"""`faiss`: an inner-product IVF (faiss-cpu, the optional extra `faiss`) over the sketch's seeded Gaussian
projection gives candidates."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..sketch import build_sketch, sketch_matrix
from .base import IndexSettings, QuerySettings, RowsProgress, SearchBackend, register_backend
from .sketch_index import check_sketch_dim

if TYPE_CHECKING:
    from ..search import ConcatenatedRows, SearchIndex


def import_faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise ImportError(
            "the faiss backend needs faiss-cpu: pip install 'dda-attribution[faiss]' (or faiss-cpu)"
        ) from err
    return faiss


def default_nlist(n: int) -> int:
    """Inverted lists: ~sqrt(n) (a list scan is cheap next to reading candidate rows), at least 39 training
    points per list (faiss warns below that)."""
    return int(max(1, min(round(np.sqrt(n)), n // 39)))


@register_backend
class FaissIVF(SearchBackend):
    """Index: ivf.faiss only. The rows are projected with the sketch's seeded Gaussian to `sketch_dim` dims (a
    temporary sketch file), an inner-product IVF with `nlist` lists (default `default_nlist`) is trained on
    `train_rows` of them (default 64 per list) and every row is added (float16 scalar quantizer). A query scans
    `nprobe` lists; the file is memory-mapped, not read whole."""

    name = "faiss"
    reads = ("candidates", "nprobe")

    def validate(self, settings: IndexSettings) -> None:
        check_sketch_dim(settings)
        import_faiss()  # a missing extra fails before the streaming pass, not after it

    def build(
        self, rows: ConcatenatedRows, out_dir: Path, settings: IndexSettings, on_block: RowsProgress | None = None
    ) -> dict[str, Any]:
        faiss = import_faiss()
        n = rows.shape[0]
        sketch_dim, seed = settings.sketch_dim, settings.seed
        sk_path = out_dir / "sketch.npy"
        proj = build_sketch(
            rows, sk_path, sketch_dim=sketch_dim, seed=seed, block_rows=rows.block_rows(), on_block=on_block
        )
        nl = min(settings.nlist or default_nlist(n), n)
        nt = min(n, settings.train_rows or 64 * nl)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=nt, replace=False))
        quantizer = faiss.IndexFlatIP(sketch_dim)
        index = faiss.IndexIVFScalarQuantizer(
            quantizer, sketch_dim, nl, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
        )
        index.train(np.ascontiguousarray(proj[sample], dtype=np.float32))
        step = 1 << 16
        for start in range(0, n, step):
            index.add(np.ascontiguousarray(proj[start : start + step], dtype=np.float32))
        faiss.write_index(index, str(out_dir / "ivf.faiss"))
        del index, quantizer, proj
        sk_path.unlink()  # the projection was only the IVF's input
        Path(str(sk_path) + ".json").unlink()
        return {"sketch_dim": sketch_dim, "seed": seed, "nlist": nl, "train_rows": nt, "quantizer": "fp16"}

    def candidates(
        self, index: SearchIndex, rows: ConcatenatedRows, queries: np.ndarray, n: int, settings: QuerySettings
    ) -> np.ndarray:
        faiss = import_faiss()
        p = index.meta["params"]
        ivf = faiss.read_index(str(index.root / "ivf.faiss"), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY)
        ivf.nprobe = max(1, min(settings.nprobe, p["nlist"]))
        q_proj = (
            torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
            @ sketch_matrix(index.meta["dim"], p["sketch_dim"], p["seed"])
        ).numpy()
        return ivf.search(np.ascontiguousarray(q_proj), min(n, index.meta["n_rows"]))[1]
