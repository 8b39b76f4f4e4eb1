# One image for the four services; docker-compose.yml picks the service with `command`.
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY cli ./cli
RUN pip install --no-cache-dir .
RUN useradd --system --uid 10001 tnrwatch
USER tnrwatch
ENV TNR_HOST=0.0.0.0
EXPOSE 8081 8082 8083 8084
CMD ["python", "-m", "services.intake.main"]
