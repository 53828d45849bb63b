# fleetpilot: two commands on a fresh Debian 12 / Python 3.11 machine.
#   make demo  -- set up, then replay a bundled real trace under every policy and write the report
#   make test  -- set up (Python packages + Debian's prometheus and chromium), then run the whole test suite
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
OUT ?= out/demo

.PHONY: setup setup-system demo test lint bench

# Everything the demo and the tests use: the slim core plus the [rl] and [prophet] extras. torch first, alone,
# from the pinned range and pip's configured index/wheels (point pip at torch's CPU wheel index to avoid the CUDA
# build), so that stable-baselines3 finds it installed.
setup:
	$(PIP) install -q 'torch>=2.3,<2.14'
	$(PIP) install -q -e '.[rl,prophet,test]'

setup-system:
	@if ! command -v prometheus >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus chromium >/dev/null; \
	fi

demo: setup
	# 1. Tune the incumbents as an SRE would, on the last training day (day 8, never evaluated): HPA, KEDA and
	#    Knative targets (and the KPA window) -> $(OUT)/tuning/*.json + ready-to-apply manifests; and, by the same
	#    rule, fleetpilot's predictive core (demand quantile, rate window, SLO guard, phase, token-mix average) -> tuning-predictive.json.
	#    Every candidate first runs through the hour before day 8, unscored (--warmup), as the replay below does
	$(PYTHON) -m fleetpilot tune --goal examples/goals/two-model-routed.yaml \
		--trace chat=servegen_m-mid_10min --trace code=servegen_m-small_10min \
		--range 691200:777600 --warmup 1h --scale-to-peak 200 --autoscaler hpa,keda,kpa,predictive --force --out $(OUT)/tuning
	# 2. ServeGen (Alibaba) language traffic, days 9-10 (validation range, never used in training or tuning),
	#    chat = m-mid, code = m-small, rescaled to a 200 req/s peak; the large+small routed goal; every policy:
	#    incumbents at their defaults and tuned (no fleetpilot shield), the predictive core (default and tuned), the
	#    learned policy on the tuned core with and without routing. Every policy first runs through the last hour
	#    of day 8, unscored (--warmup), so each enters day 9 in its own steady state. --force (as for tune above):
	#    a second `make demo` replaces its own report; without it an existing report is never overwritten
	$(PYTHON) -m fleetpilot replay --goal examples/goals/two-model-routed.yaml \
		--trace chat=servegen_m-mid_10min --trace code=servegen_m-small_10min \
		--range 777600: --warmup 1h --scale-to-peak 200 \
		--policies static,hpa,keda,kpa,hpa-tuned:$(OUT)/tuning,keda-tuned:$(OUT)/tuning,kpa-tuned:$(OUT)/tuning,predictive,predictive-tuned:$(OUT)/tuning,oracle,rl:two-model-routed#core=$(OUT)/tuning,rl:two-model-routed#core=$(OUT)/tuning+scaling-only \
		--seed 0 --force --out $(OUT)

test: setup setup-system
	$(PYTHON) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint:
	$(PYTHON) -m ruff check .

bench:
	$(PYTHON) benchmarks/bench_simulator.py
