"""The root of every exception mcdrop raises on purpose, and its hierarchy (no torch here).

Catch :class:`MCDropError` for anything mcdrop refuses; catch a branch, or a leaf, for one kind of failure.
Each class also keeps the builtin base its users already catch (``except ValueError`` still catches an
:class:`~mcdrop.io.readers.InputError`), so the tree adds a root without changing what is caught.  A leaf is
defined in the module that raises it, next to the code it describes, and imported from there.

Our exception hierarchy::

    MCDropError                          mcdrop.errors: anything mcdrop refuses or could not finish
    ├── ParameterError (ValueError)      mcdrop.errors: a parameter outside what it accepts; ``param`` names it
    │   ├── ConfigError                  mcdrop.training.configs: a training config field (``field``)
    │   └── SettingError                 mcdrop.serving.config: an ``MCDROP_*`` setting (``variable``)
    ├── ModelError                       mcdrop.errors: a model that cannot be loaded, imported or sampled as it stands
    │   ├── ArtifactError (ValueError)   mcdrop.nets.artifacts: a model folder missing, incomplete or unlike its card
    │   │   └── ModelNotFoundError       mcdrop.nets.artifacts: no model by that name or path
    │   ├── DropoutConfigError (ValueError)  mcdrop.sampling.engine: no dropout to sample in MC mode, or one it cannot
    │   ├── ExportError (ValueError)     mcdrop.nets.export: a network with a layer or op that cannot be imported
    │   ├── GraphFormatError (ValueError)  mcdrop.nets.graph: an architecture spec outside the tables
    │   └── KernelBuildError (RuntimeError)  mcdrop.sampling.kernels: the fused kernel could not be compiled
    ├── DataError                        mcdrop.errors: data (a file, an array, a body) missing or not what it claims
    │   ├── InputError (ValueError)      mcdrop.io.readers: an input file, or the parameter describing it
    │   ├── OutputError (OSError)        mcdrop.io.writers: an output that cannot be written
    │   ├── CalibrationDataError (ValueError)  mcdrop.training.imported: calibration data that does not fit the model
    │   ├── DataNotFoundError (FileNotFoundError)  mcdrop.training.data: a dataset that is not on disk
    │   └── WireError (ValueError)       mcdrop.wire: a binary body that is not what it claims
    ├── SamplingCancelled (RuntimeError)  mcdrop.sampling.engine: the caller's ``cancelled`` check stopped sampling
    ├── UntestedBentoML (RuntimeError)   mcdrop.service.patches: the installed BentoML is outside the tested range
    ├── PredictError                     mcdrop.serving.errors: a request the predictor refuses or could not finish
    │   ├── UnknownModel                 the model is not served here
    │   ├── InvalidRequest               the request does not fit the model or the server's caps
    │   ├── TooLarge                     more rows or work than one request may ask
    │   ├── OutputOverflow               inputs so far out of range that the output overflowed
    │   ├── Overloaded                   the queue would miss the deadline: retry later
    │   ├── DeadlineExceeded             the request's time ran out
    │   └── Cancelled                    the client went away
    ├── ClientError                      mcdrop.client: the client could not get an answer
    │   ├── APIError                     the server refused the request (``status``, ``field``)
    │   ├── UnavailableError             unreachable, or 502/503/504 after every retry
    │   ├── RequestTimeout               no complete answer within the timeout
    │   └── ResponseError                an answer that cannot be read
    └── CLIError                         mcdrop.cli.common: a command's one-line failure, with its exit code

Library messages name the parameter at fault as it is spelled in Python, marked with backquotes:
``"`key` 'x': data.npz holds no such array"``.  The doors translate the mark: the CLI to its
flag (``--key 'x': ...``, :class:`mcdrop.cli.common.CLIError`); the service names request fields.
"""

from __future__ import annotations

__all__ = ["DataError", "MCDropError", "ModelError", "ParameterError"]


class MCDropError(Exception):
    """Anything mcdrop refuses or could not finish; the message says what was expected and how to fix it."""


class ParameterError(MCDropError, ValueError):
    """A parameter with a value outside what it accepts; ``param`` names it as spelled in Python."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelError(MCDropError):
    """A model that cannot be loaded, imported or sampled as it stands; the message names the part at fault."""


class DataError(MCDropError):
    """Data (a file, an array, a request body) that is missing or not what it claims; the message names it."""
