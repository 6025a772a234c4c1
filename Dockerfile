# seqproc image: the `seqproc` console script and its dependencies, run as an unprivileged user.
#   docker build -t seqproc:local .
#   docker run --rm seqproc:local seqproc --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The installed package, one import name `seqproc` (its producer, worker, models and migrations), carries everything
# at run time; the source is only needed to build it. .dockerignore keeps the venv, caches, tests and secrets out.
WORKDIR /tmp/seqproc-src
COPY . .
RUN pip install . \
    && cd / && rm -rf /tmp/seqproc-src \
    && useradd --create-home --uid 10001 --user-group seqproc

USER seqproc
WORKDIR /home/seqproc

# docker-compose.yml gives each service its own command: `seqproc migrate`, `seqproc worker --partitions 0-7`, ...
CMD ["seqproc", "--help"]
