"""Figures: matplotlib with the file-only Agg backend, and PNGs written atomically.

Shared by every ``plot`` of the package (sparsity reports, sensitivity reports, latency
models); matplotlib is imported only when a figure is drawn.
"""
from ._files import atomic_write
from .errors import MissingDependencyError, install_hint

__all__ = []


def save_figure(fig, path, dpi):
    """Write a matplotlib figure to ``path`` as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    try:
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format='png', dpi=dpi)
    finally:
        plt.close(fig)


def pyplot():
    """``matplotlib.pyplot`` with the file-only Agg backend, or MissingDependencyError (so
    a caller can check before a long run that a plot will be possible)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        raise MissingDependencyError(
            "SparsityReport.plot needs matplotlib: %s." % install_hint('plot')) from None
    return plt
