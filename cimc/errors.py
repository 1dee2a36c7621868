"""Errors a user can act on. The CLI turns every CimcError into `cimc: error: ...` and exit code 2."""


class CimcError(Exception):
    """Base class: bad input that the user can fix (the message says what and how)."""


class ModelError(CimcError):
    """The ONNX model cannot be compiled (names the node, op type and opset)."""


class TargetError(CimcError):
    """A target description or override is invalid (names the file and field)."""


class ManifestError(CimcError):
    """A manifest directory is missing, corrupt or inconsistent (names the file and field)."""


class DataError(CimcError):
    """A data or calibration file is unusable (names the file and key)."""


class ConfigError(CimcError):
    """A compile option is invalid (for example a --replicate name that matches no layer)."""
