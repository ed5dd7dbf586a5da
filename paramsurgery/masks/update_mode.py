"""Update-mode masks: the Trainer keeps the masked entries of the stored weight at zero.

An update-mode mask (``apply_mask(..., mode='update')``) keeps the stored weight at zero
under the mask: the weight is multiplied by it once, and every optimizer update that the
parameter's Trainers run in this process masks the gradient first. Every update goes
through an ``mxnet.optimizer.Updater``: one per context in the Trainer (``update_on_kvstore``
False, or no kvstore), or the one a local/device kvstore calls inside ``push``
(``update_on_kvstore`` True; created at the Trainer's first step). Those Updater objects get
the class :class:`MaskingUpdater` (same object, same states: the kvstore's C callback, the
Trainer and ``save_states``/``load_states`` keep working on it). A Trainer is watched
through an instance-level hook on the kvstore creation (the first thing every ``step``,
``update`` and ``allreduce_grads`` runs while its kvstore is not created yet, also after
``set_data`` reset it), so a kvstore created later is covered too; a Trainer built after
the mask is found by an instance-level hook on the weight, which every ``Trainer.__init__``
calls. Which MXNet attributes these hooks use is listed in ``paramsurgery._mx``.
"""
from mxnet import autograd
from mxnet import numpy as mx_np
from mxnet import optimizer as mx_optimizer

from .. import _mx
from ..errors import TrainerStateError, and_more

__all__ = []

#: Optimizers that leave an entry at exactly zero when its weight, gradient and state are
#: zero (checked for each in tests/test_mask_modes.py, with weight decay, momentum, gradient
#: clipping and multi_precision): masking the gradient is enough. Any other optimizer (SGLD
#: adds noise, Adamax divides 0 by 0, user-defined ones are unknown) also gets its weight,
#: and fp32 master copy, masked after each update.
ZERO_PRESERVING = (mx_optimizer.SGD, mx_optimizer.NAG, mx_optimizer.Adam,
                   mx_optimizer.AdaGrad, mx_optimizer.AdaDelta, mx_optimizer.RMSProp,
                   mx_optimizer.Nadam, mx_optimizer.Ftrl, mx_optimizer.FTML,
                   mx_optimizer.Signum, mx_optimizer.LAMB, mx_optimizer.LARS,
                   mx_optimizer.LBSGD, mx_optimizer.ccSGD)


class MaskingUpdater(mx_optimizer.Updater):
    """An ``mxnet.optimizer.Updater`` that masks the gradient of every parameter with an
    update-mode mask before the update (and, for optimizers not in
    :data:`ZERO_PRESERVING`, the weight and its fp32 master copy after it).

    Installed by changing the class of an existing Updater, so that every holder of the
    object (the Trainer, a kvstore's C callback) keeps its states and sees the change.
    Parameters are found through ``optimizer.param_dict`` (index -> Parameter), which
    ``gluon.Trainer`` sets and keeps up to date (also after ``load_states``).
    """

    #: what ``_mx.enforcement_gaps`` looks for (it cannot import this class)
    masks_gradients = True

    def __call__(self, index, grad, weight):
        many = isinstance(index, (list, tuple))
        indices, grads, weights = (index, grad, weight) if many else ([index], [grad], [weight])
        param_dict = getattr(self.optimizer, 'param_dict', None) or {}
        masked = []
        for idx, g, w in zip(indices, grads, weights):
            mask = _mx.update_mask(param_dict.get(idx))
            if mask is not None:
                m = _mx.mask_on(mask, g.context)
                _mx.multiply_inplace(g, m)
                masked.append((idx, w, m))
        mx_optimizer.Updater.__call__(self, index, grad, weight)
        if masked and type(self.optimizer) not in ZERO_PRESERVING:
            for idx, w, m in masked:
                _mx.zero_where_masked(w, m)
                for master in _mx.master_copies([self], idx):
                    _mx.zero_where_masked(master, m)


def _enforce_on(updater):
    if updater is None or isinstance(updater, MaskingUpdater):
        return
    if type(updater) is mx_optimizer.Updater:
        _mx.set_updater_class(updater, MaskingUpdater)


def enforce_masks(trainer):
    """Give every Updater of ``trainer`` in this process the class :class:`MaskingUpdater`."""
    for updater in _mx.process_updaters(trainer):
        _enforce_on(updater)


def _refuse_at_kvstore_creation(trainer):
    names = [p.name for p in _mx.trainer_params(trainer)
             if _mx.update_mask(p) is not None]
    if names and _mx.runs_on_servers(trainer):
        raise TrainerStateError(
            "Parameter %s has an update-mode mask (ps.apply_mask(..., mode='update')), but "
            "this Trainer runs the optimizer on the servers of kvstore '%s' "
            "(update_on_kvstore=True), where the gradient cannot be masked: the masked "
            "entries would train. Nothing was changed. Fix: use mode='graph' for these "
            "masks, or update_on_kvstore=False."
            % (and_more(names),
               _mx.kvstore_type(_mx.trainer_kvstore(trainer)[0])))


def _watching_init_kvstore(trainer):
    _refuse_at_kvstore_creation(trainer)
    _mx.class_init_kvstore(trainer)
    # the next thing every step runs is _init_params, which hands each listed parameter to
    # the kvstore: a dist kvstore's server dies on a uint8 update-mode mask, and no mask is
    # trainable state (paramsurgery writes every replica itself)
    _mx.keep_masks_out_of_kvstore(trainer)
    enforce_masks(trainer)


def watch_trainer(trainer):
    """Enforce update-mode masks in ``trainer`` now and whenever it (re)creates its kvstore."""
    if not _mx.is_watched(trainer):
        _mx.hook_init_kvstore(trainer, _watching_init_kvstore)
    if _mx.has_updaters(trainer):
        enforce_masks(trainer)


def _recording_set_trainer(param, trainer):
    _mx.class_set_trainer(param, trainer)
    if trainer is not None and _mx.update_mask(param) is not None:
        _mx.remember_trainer(param, trainer)
        watch_trainer(trainer)


def _watching_mask_set_trainer(mask, trainer):
    _mx.class_set_trainer(mask, trainer)
    if trainer is not None:
        watch_trainer(trainer)


def set_update_mask(param, mask):
    """Make ``mask`` (a Parameter) the update-mode mask of ``param``; None removes it."""
    _mx.store_update_mask(param, mask, _recording_set_trainer)


def mark_mask_param(mask):
    """Mark ``mask`` (a mask Parameter, either mode) so that every Trainer built on it is
    watched and keeps it out of its kvstore."""
    _mx.store_mask_mark(mask, _watching_mask_set_trainer)


def zero_states_under(trainers, param, mask):
    """Zero every optimizer state of ``param`` (not its fp32 master copy) in every Updater
    of ``trainers`` in this process where ``mask`` (a Parameter of ``param``'s shape) is 0."""
    for trainer in trainers:
        for arr in _mx.optimizer_states(trainer, param):
            with autograd.pause():
                m = _mx.mask_on(mask, arr.context)
                alive = mx_np.not_equal(_mx.as_np(m), 0)
                _mx.multiply_inplace(arr, alive)
