"""Redis coordination: moved to `optask.infra.coordination`; this path (the seed's `get_redis_coordinator`)
keeps working."""

from optask.infra.coordination import RedisCoordinator
from optask.infra.redis_server import get_redis_coordinator

__all__ = ["RedisCoordinator", "get_redis_coordinator"]
