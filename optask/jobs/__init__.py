"""What the Celery tasks call: the live minute, batches, repair, backfill, end of day, the ticker's cut."""

import redis

from optask.infra.fsutil import StorageError
from optask.providers.base import TemporaryProviderError

#: Faults worth retrying: the provider or a store is briefly unavailable. An expired token
#: (PermanentProviderError) is not among them: retrying cannot fix it.
RETRYABLE = (TemporaryProviderError, StorageError, redis.ConnectionError, redis.TimeoutError)
