# One image for the four services; docker-compose.yml picks the service with `command`.

# The dashboard's charting library, from npm at build time (never committed, never a CDN).
FROM node:20-slim AS dashboard
WORKDIR /dashboard
COPY services/projections/dashboard/package.json services/projections/dashboard/package-lock.json services/projections/dashboard/build.mjs ./
RUN npm ci --no-audit --no-fund && npm run build

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY shared ./shared
COPY services ./services
COPY cli ./cli
COPY --from=dashboard /dashboard/vendor ./services/projections/dashboard/vendor
# Editable: migrations, rules, the act table and the dashboard are read beside the code.
RUN pip install --no-cache-dir -e .
RUN useradd --system --uid 10001 tnrwatch
USER tnrwatch
ENV TNR_HOST=0.0.0.0
EXPOSE 8081 8082 8083 8084
CMD ["python", "-m", "services.intake.main"]
