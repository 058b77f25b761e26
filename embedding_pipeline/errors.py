"""Domain exceptions. Messages name the table/key and the fix; they never carry document text or keys."""


class EmbeddingPipelineError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(EmbeddingPipelineError):
    """The configuration is invalid or names something that does not exist."""


class DatabaseError(EmbeddingPipelineError):
    """The database is unreachable, lacks pgvector, or a table/column is missing."""


class SpaceIdentityError(EmbeddingPipelineError):
    """A space name is being reused for a different vector space."""


class ProviderError(EmbeddingPipelineError):
    """The embedding provider failed or returned something we must not write."""


class InputRefused(ProviderError):
    """The provider refused these inputs (a 4xx answer, not a fault of ours or of the network): the
    re-embed engine isolates the rows it refuses instead of failing the whole partition."""


class CloudEndpointRefused(ProviderError):
    """A cloud endpoint was configured for a space that did not opt in."""


class ValidationFailed(EmbeddingPipelineError):
    """The startup validator found a dimension mismatch or a model swap."""


class RefusedError(EmbeddingPipelineError):
    """A cutover, rollback or deletion was refused; ``reasons`` lists why."""

    def __init__(self, message: str, reasons: list[str] | None = None):
        self.reasons = reasons or [message]
        super().__init__(message if not reasons else message + ":\n  - " + "\n  - ".join(reasons))


class BackupError(EmbeddingPipelineError):
    """A backup could not be taken or did not verify."""
