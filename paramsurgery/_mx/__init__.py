"""Every access to private MXNet 1.9.1 attributes lives in this package, and nothing else.

The rest of paramsurgery talks to Gluon through these small functions (all importable from
here: ``from .. import _mx``, then ``_mx.raw_data(param)``), so that a port to another MXNet
version (2.0 renamed ``_ctx_list``/``_ctx_map`` to ``_device_list``/``_device_map``) changes
this package only. What the attributes mean is explained in ``docs/internals.md``. The
modules, each importing only from the ones above it (``tests/test_layers.py`` checks this)::

    host                                host reads (settled), numpy views, MKLDNN's layout
    arrays, blocks, objects, runtime    NDArrays; Blocks; whole-object state; ONNX, threads
    params                              Parameters, ParameterDicts, paramsurgery's marks
    trainer                             Trainers, kvstores, Updaters, Optimizers

The complete inventory of the private names used here:

- Parameter: ``_data`` (list of leaf NDArrays, one per context), ``_grad`` (the matching
  gradient buffers or None), ``_ctx_list``, ``_ctx_map``, ``_deferred_init``, ``_trainer``,
  ``_grad_req`` (written without the property's re-allocation), ``_stype``, ``_grad_stype``,
  ``_shape``, ``_var``, ``_init_grad``, ``_load_init``, ``_set_trainer``.
- ParameterDict: ``_params`` (the name -> Parameter dict behind it).
- NDArray: ``_fresh_grad`` (set by ``backward()``, read and cleared by ``Trainer.step``).
- Block: ``_children``, ``_reg_params`` (the Parameter attributes its ``hybrid_forward``
  receives by name), ``_collect_params_with_prefix`` (structural names, as
  ``save_parameters`` uses them); HybridBlock: ``_active``, ``_cached_op``,
  ``_cached_op_args``, ``_clear_cached_op``; the layers: ``_op_name``, ``_kwargs``,
  ``_channels``, ``_in_channels``, ``_units``, ``_in_units`` (and the classes ``_Conv``,
  ``_BatchNorm``).
- Trainer: ``_kvstore``, ``_kvstore_params``, ``_kv_initialized``, ``_update_on_kvstore``,
  ``_param2idx``, ``_params``, ``_params_to_init``, ``_updaters``, ``_optimizer``,
  ``_contains_sparse_weight``, ``_contains_sparse_grad``, ``_init_kvstore``,
  ``_init_params``, ``_reset_kvstore``.
- KVStore: ``_updater``, ``_set_updater``.
- ``mxnet.base._LIB.MXSetNumOMPThreads`` (the C call that fixes the OpenMP thread count of
  the calling thread), ``MXEnginePushSyncND`` (runs a callback on the engine's CPU worker,
  whose OpenMP count operators use), ``omp_get_max_threads``/``omp_set_num_threads`` (the
  OpenMP runtime libmxnet links),
  ``MXNDArrayGetData`` (the address of a CPU array's memory, ``host.py``);
  ``mxnet.onnx.mx2onnx._export_onnx.MXNetGraph`` (the ONNX converter).
- Optimizer: ``_all_index_update_counts`` (and its alias ``_index_update_count``).
- Updater (``mxnet.optimizer``): ``states``, ``optimizer`` (public attributes, no
  accessors), and its class, which ``paramsurgery.masks.update_mode`` changes to its
  ``MaskingUpdater``; Optimizer: ``param_dict``, ``multi_precision``.
- The whole ``__dict__`` of Blocks, Parameters, ParameterDicts, Trainers, Optimizers,
  Updaters and learning-rate schedulers, copied and put back by the transaction
  (``objects.py``).
- Instance-level overrides paramsurgery installs (``params.py``, ``trainer.py``):
  ``Parameter._set_trainer`` and ``Trainer._init_kvstore``, plus its own
  ``_paramsurgery_*`` attributes on Parameters.
"""

from .arrays import (  # noqa: F401
    as_np,
    fresh_grad,
    is_leaf,
    multiply_inplace,
    set_fresh_grad,
    zero_where_masked,
)
from .blocks import (  # noqa: F401
    block_attrs_state,
    block_children,
    block_params,
    cached_graph_params,
    class_overrides_structural_names,
    clear_cached_graphs,
    conv_kwargs,
    conv_op_name,
    is_batchnorm,
    is_conv,
    is_deconv,
    is_dense,
    is_depthwise,
    is_embedding,
    is_hybridized,
    own_structural_names,
    registered_params_live,
    resize_block,
    resize_rnn_layer,
    restore_block_attrs,
    set_registered_params,
    set_structural_names,
    structural_names,
    walk_blocks,
)
from .host import (  # noqa: F401
    host_array,
    host_arrays,
    is_blocked_layout,
    settle,
    shared_ndarray,
    to_host,
)
from .objects import (  # noqa: F401
    object_state,
    restore_object_state,
)
from .params import (  # noqa: F401
    class_set_trainer,
    context_index,
    context_list,
    excluded_from_step,
    initialize_with,
    is_deferred,
    is_mask_param,
    known_trainers,
    last_trainer,
    load_init,
    mask_changed,
    mask_on,
    param_arrays_state,
    param_dict_get,
    param_dict_remove,
    param_stypes,
    raw_data,
    raw_grad,
    remember_trainer,
    reset_var,
    restore_param_arrays,
    set_param_arrays,
    store_mask_mark,
    store_update_mask,
    update_mask,
    write_replicas,
)
from .runtime import (  # noqa: F401
    omp_threads,
    onnx_graph,
    set_omp_threads,
)
from .trainer import (  # noqa: F401
    class_init_kvstore,
    effective_update_on_kvstore,
    enforcement_gaps,
    has_updaters,
    hook_init_kvstore,
    init_trainer_kvstore,
    is_distributed,
    is_watched,
    keep_masks_out_of_kvstore,
    keeps_copies,
    kvstore_copies,
    kvstore_of,
    kvstore_type,
    master_copies,
    optimizer_counters,
    optimizer_states,
    params_to_broadcast,
    process_updaters,
    put_kvstore_copies,
    reinit_trainer_kvstore,
    reset_optimizer_state,
    runs_on_servers,
    set_optimizer_counters,
    set_updater_class,
    state_arrays,
    sync_trainer,
    trainer_index,
    trainer_kvstore,
    trainer_params,
    updater_class,
)

__all__ = []
