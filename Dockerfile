# The optask image used by docker-compose.yml for worker, beat and flower.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md beat_schedule.py ./
COPY optask ./optask
COPY tasks ./tasks
RUN pip install --no-cache-dir .
ENV BASE_DATA_DIR=/data
CMD ["optask", "--help"]
