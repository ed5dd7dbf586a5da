"""Masks on parameters, in the forward graph or in the stored weights and their updates.

``paramsurgery.masks.apply_mask`` and the other public names stay importable from here.
The modules, each importing only from the ones above it (``tests/test_layers.py`` checks
this)::

    forward, update_mode   the masked hybrid_forward; the Updaters that keep zeros at zero
    owners                 which block owns a weight, and whether a mask can act there
    modes -> values        the modes and combines; mask values and new mask parameters
    apply, existing        apply_mask, apply_core_masks; masked, mask_mode, get_mask, remove_mask
    files                  save_masks, load_masks, load_exported

``broadcast_masks`` lives in ``paramsurgery.distributed``, with the other kvstore code.
See ``docs/masks.md``.
"""
# MODES, UPDATE_MASK_DTYPE, mask_mode, unmasked_params and structural_keys are public here
# (not at the top level), as before the split.
from ..distributed import broadcast_masks
from .apply import apply_mask
from .existing import get_mask, mask_mode, masked, remove_mask  # noqa: F401
from .files import load_exported, load_masks, save_masks, structural_keys  # noqa: F401
from .modes import MODES, UPDATE_MASK_DTYPE, unmasked_params  # noqa: F401

__all__ = ['apply_mask', 'get_mask', 'masked', 'remove_mask', 'save_masks', 'load_masks',
           'load_exported', 'broadcast_masks']
