"""Typed errors of the model zoo (the zoo does not import p2pinfer; the runtime maps these)."""

from __future__ import annotations


class ZooError(Exception):
    """Base of every zoo error."""


class ManifestError(ZooError, ValueError):
    """The manifest is missing, malformed or inconsistent with the weights."""


class UnknownFamilyError(ZooError, KeyError):
    """No family of that name is registered or listed in the manifest."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else "unknown family"


class UnknownVariantError(ZooError, KeyError):
    """No variant of that name is listed in the manifest."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown variant"


class BlockRangeError(ZooError, ValueError):
    """A block range outside the variant, or outside what a partially loaded slice holds."""


class WeightIntegrityError(ZooError):
    """A weight file whose sha256 differs from the manifest's: refused, never loaded."""


class BackendUnavailableError(ZooError, RuntimeError):
    """The requested backend (cuda, tensorrt) is not available on this machine."""


class GraphIntegrityError(ZooError):
    """A graph description whose sha256 differs from the manifest's, or that is malformed: refused."""


class UnsupportedOpError(ZooError, ValueError):
    """An op outside the whitelist (in a graph file), or one the importer cannot convert."""


class NoSingleTensorCutError(ZooError, ValueError):
    """A model cannot be cut into the requested blocks: too few points where one tensor is live."""


class ImportSourceError(ZooError, ValueError):
    """A model source that cannot be imported: bad path or factory, or a model the importer cannot trace."""


class ExitDataError(ZooError, ValueError):
    """Training or held-out data for exit heads that is missing, malformed or does not fit the variant."""


class ExitTrainingError(ZooError, ValueError):
    """Exit heads that cannot be trained or rebuilt: a variant that is not imported, a block
    with no exit, features no head design takes, or a head specification outside the designs."""
