"""A CUDA device emulated on a CPU build, with real values, for the device-placement tests.

FakeTensorMode (torch._subclasses.fake_tensor) lets a CPU build make tensors that claim
``device='cuda'``, but they hold no values: ``.item()``, ``int(t)`` and data-dependent sizes
(``topk(k)`` with k computed from a mask) raise DataDependentOutputException, and the training
step, the evaluation and the pruning schedule all read values. On this CPU build of torch it also
cannot move a module to cuda nor run autograd there ("PyTorch is not linked with support for cuda
devices"), so it serves the block-sparse ops' fake kernels only. Here a tensor on ``cuda`` is a
wrapper subclass around a real CPU tensor: every op runs on the real tensors, and before it runs
the devices of its tensor arguments are checked by the rule CUDA kernels apply (and
FakeTensor's ``_find_common_device`` models): tensors of more than zero dimensions on ``cuda``
and on ``cpu`` may not meet in one op; a zero-dim CPU tensor counts as a scalar; copies between
devices, and CPU index tensors, are allowed. A mismatch raises :class:`DeviceMismatchError`.

Inside :func:`emulated_cuda`, factories and ``.to`` with ``device='cuda'`` make such tensors, so
``torch.from_numpy(a).to(device)`` behaves as on a GPU machine and :func:`module_to_cuda` moves a
model; :func:`deepspeed_on_emulated_cuda` makes DeepSpeed's engine place the model and its own
buffers there; :func:`nccl_rules` holds collectives to NCCL's rule (CUDA tensors only).
``torch.cuda.is_available()`` stays False: only placement is emulated.
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

aten = torch.ops.aten
CUDA = torch.device("cuda", 0)
# ops that legitimately take tensors on two devices
CROSS_DEVICE = {aten.copy_.default, aten._to_copy.default, aten._copy_from.default, aten._copy_from_and_resize.default,
                aten.set_.source_Tensor, aten._has_compatible_shallow_copy_type.default}
INDEXED = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class DeviceMismatchError(RuntimeError):
    """cuda and cpu tensors met in one op, as a CUDA kernel refuses."""


class OnCuda(torch.Tensor):
    """A real CPU tensor that says it is on ``cuda:0``.

    The dispatcher and autograd see its real device (cpu): a CPU build has no CUDA device guard, which
    autograd needs for a tensor on cuda. Python code sees ``.device == cuda:0`` and ``.is_cuda``, ``.cpu()``
    and ``.to('cpu')`` copy to a plain CPU tensor, and the dispatch mode below keeps results on cuda.
    """

    @staticmethod
    def __new__(cls, real: torch.Tensor):
        assert type(real) is torch.Tensor and real.device.type == "cpu", type(real)
        out = torch.Tensor._make_wrapper_subclass(cls, real.shape, strides=real.stride(),
                                                   storage_offset=real.storage_offset(), dtype=real.dtype,
                                                   layout=real.layout, device=real.device,
                                                   requires_grad=real.requires_grad)
        out._cpu = real
        return out

    device = property(lambda self: CUDA)
    is_cuda = property(lambda self: True)
    is_cpu = property(lambda self: False)

    def __repr__(self):
        return f"OnCuda({self._cpu!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to and _to_device(args, kwargs) in ("cuda", None) and not kwargs.get("copy"):
            dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), None))
            if dtype in (None, args[0].dtype):
                return args[0]  # already there: the tensor itself, as torch returns (modules keep their parameters)
        if func is torch.Tensor.cpu or (func is torch.Tensor.to and _to_device(args, kwargs) == "cpu"):
            # the binding would see a tensor already on the CPU and return it unchanged
            dtype = kwargs.get("dtype", next((a for a in args[1:] if isinstance(a, torch.dtype)), None))
            return torch.ops.aten._to_copy.default(args[0], dtype=dtype, device=torch.device("cpu"))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        with _Mode():
            return func(*args, **(kwargs or {}))


def _to_device(args, kwargs) -> str | None:
    """The device type a ``Tensor.to`` call moves to, None when it keeps the device."""
    device = kwargs.get("device")
    for a in args[1:]:
        if isinstance(a, (str, torch.device, int)) and not isinstance(a, bool):
            device = a
        elif isinstance(a, torch.Tensor):
            device = a.device
    if device is None:
        return None
    return torch.device(device).type if not isinstance(device, int) else "cuda"


def _is_cuda(device) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _check_devices(func, args, kwargs) -> bool:
    """Whether the op's result lives on cuda; raises on a cuda/cpu mix a CUDA kernel would refuse."""
    if func in INDEXED:  # indices may stay on the CPU; self and values may not differ
        checked = [args[0]] + [a for a in args[2:] if isinstance(a, torch.Tensor)]
    else:
        checked = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
    cuda = [t for t in checked if isinstance(t, OnCuda)]
    cpu = [t for t in checked if not isinstance(t, OnCuda) and t.device.type == "cpu"]
    if func not in CROSS_DEVICE and cuda and any(t.dim() > 0 for t in cpu):
        shapes = [tuple(t.shape) for t in cpu if t.dim() > 0]
        raise DeviceMismatchError(f"{func}: expected all tensors to be on the same device, found cuda:0 and cpu "
                                  f"(CPU tensors of shape {shapes})")
    target = kwargs.get("device")
    if target is not None and func.__name__.startswith("new_") and isinstance(args[0], OnCuda):
        return True  # the binding fills in the C++ device of self (cpu) for x.new_zeros(...) and its kin
    if target is not None:
        return _is_cuda(target)
    return bool(cuda) and func not in (aten._to_copy.default,)  # _to_copy without a device keeps its input's


def _unwrap(x):
    return x._cpu if isinstance(x, OnCuda) else x


def _wrap(x):
    return OnCuda(x) if type(x) is torch.Tensor and x.device.type == "cpu" else x


class _Mode(TorchDispatchMode):
    """Routes ``device='cuda'`` to the CPU and wraps the results of ops on cuda."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is aten._local_scalar_dense.default:  # .item(): a host read, allowed from any device
            return func(_unwrap(args[0]))
        if func is aten._to_copy.default and "device" not in kwargs:
            on_cuda = isinstance(args[0], OnCuda)
        else:
            on_cuda = _check_devices(func, args, kwargs)
        if "device" in kwargs:
            kwargs["device"] = torch.device("cpu")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        if func._schema.is_mutable and isinstance(args[0], OnCuda) and out is args[0]._cpu:
            return args[0]  # an in-place op returns the tensor it was called on
        return tree_map(_wrap, out) if on_cuda else out


@contextlib.contextmanager
def emulated_cuda():
    """Within: ``device='cuda'`` makes emulated CUDA tensors; mixing them with CPU tensors raises."""
    # A CPU build's `Tensor.to('cuda')` asks torch.cuda to initialise before dispatch (FakeTensorMode is
    # exempt as an infrastructure mode); marked initialised, it goes on to the dispatcher and this mode.
    # torch.tensor(data, device='cuda') builds below the dispatcher's Python key unless told to build on
    # the CPU and move the result (FakeTensorMode sets the same switch).
    was, lift = torch.cuda._initialized, torch._C._only_lift_cpu_tensors()
    torch.cuda._initialized = True
    torch._C._set_only_lift_cpu_tensors(True)
    try:
        with _Mode():
            yield CUDA
    finally:
        torch.cuda._initialized = was
        torch._C._set_only_lift_cpu_tensors(lift)


def module_to_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """``module.to('cuda')`` inside :func:`emulated_cuda`, keeping each Parameter object (a GPU build
    assigns ``.data``; across tensor types the parameters are swapped instead). Moving it again, as
    DeepSpeed does, leaves it as it is."""
    swapped = torch.__future__.get_swap_module_params_on_conversion()
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        return module.to(CUDA)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(swapped)


@contextlib.contextmanager
def deepspeed_on_emulated_cuda():
    """:func:`emulated_cuda`, with DeepSpeed's CPU accelerator naming ``cuda`` as its device: an engine made
    inside moves the model to cuda:0 and makes its own buffers there, as its CUDA accelerator would."""
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    patched = {"device_name": lambda device_index=None: "cuda" if device_index is None else f"cuda:{device_index}",
               "current_device_name": lambda: "cuda:0"}
    saved = {name: accelerator.__dict__.get(name) for name in patched}
    accelerator.__dict__.update(patched)
    try:
        with emulated_cuda() as device:
            yield device
    finally:
        for name, old in saved.items():
            if old is None:
                accelerator.__dict__.pop(name, None)
            else:
                accelerator.__dict__[name] = old


class NcclDeviceError(RuntimeError):
    """A collective got a tensor that is not on the emulated GPU: NCCL accepts CUDA tensors only."""


@contextlib.contextmanager
def nccl_rules():
    """Collectives as NCCL takes them: each ``torch.distributed`` collective (which DeepSpeed's comm layer
    calls too) is recorded, refused (:class:`NcclDeviceError`) for a tensor not on cuda, then run for real
    on the tensor's CPU storage by the process group there is (gloo). Yields the record: a list of
    (collective, device) pairs; ``broadcast_object_list`` records the ``device`` it was given."""
    import torch.distributed as dist

    calls: list[tuple[str, object]] = []
    originals = {name: getattr(dist, name) for name in ("all_reduce", "broadcast", "broadcast_object_list",
                                                        "all_gather_into_tensor", "reduce_scatter_tensor")}

    def tensor_collective(name):
        def run(tensor, *args, **kwargs):
            calls.append((name, tensor.device))
            if not isinstance(tensor, OnCuda):
                raise NcclDeviceError(f"{name}: NCCL takes CUDA tensors only, got one on {tensor.device}")
            real_args = [_unwrap(a) for a in args]
            return originals[name](_unwrap(tensor), *real_args, **{k: _unwrap(v) for k, v in kwargs.items()})
        return run

    def broadcast_object_list(object_list, src=None, group=None, device=None, **kwargs):
        calls.append(("broadcast_object_list", device))
        if device is None or torch.device(device).type != "cuda":
            raise NcclDeviceError(f"broadcast_object_list: device={device}: NCCL would stage the objects on "
                                  "torch.cuda.current_device(), GPU 0 on every rank unless set first")
        return originals["broadcast_object_list"](object_list, src=src, group=group, device=torch.device("cpu"),
                                                  **kwargs)

    patched = {name: tensor_collective(name) for name in originals if name != "broadcast_object_list"}
    patched["broadcast_object_list"] = broadcast_object_list
    for name, fn in patched.items():
        setattr(dist, name, fn)
    try:
        yield calls
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
