# Deployment checks: container image, Helm chart, CloudFormation, architecture diagram.
# Included from the main Makefile, which defines VENV, PY and the `venv` target; the
# defaults below only make this file usable on its own.
VENV ?= .venv
PY ?= $(VENV)/bin/python

DEPLOY_CACHE := $(CURDIR)/.cache
HELM ?= $(DEPLOY_CACHE)/tools/helm
HELM_ENV := HELM_CACHE_HOME=$(DEPLOY_CACHE)/helm/cache \
            HELM_CONFIG_HOME=$(DEPLOY_CACHE)/helm/config \
            HELM_DATA_HOME=$(DEPLOY_CACHE)/helm/data
CHART := charts/exporter
CHART_VALUES_PROD := $(CHART)/ci/production-values.yaml
RENDERED := $(DEPLOY_CACHE)/rendered
# Kubernetes version the rendered manifests must be valid for (EKS standard support).
KUBE_VERSION ?= 1.33.0

.PHONY: deploy-tools lint-deploy lint-dockerfile lint-chart lint-infra test-deploy diagram

## Install helm (.cache/tools), hadolint, kubernetes-validate, cfn-lint, diagrams, graphviz.
# A stamp, like the venv's: done once, again when the script or the venv changes. So `make
# test` runs the script once even though the linters and pytest, running at once, all need it.
DEPLOY_TOOLS_STAMP := $(DEPLOY_CACHE)/tools/.installed
deploy-tools: $(DEPLOY_TOOLS_STAMP)

$(DEPLOY_TOOLS_STAMP): scripts/install-deploy-tools.sh $(VENV)/.installed
	VENV=$(VENV) bash scripts/install-deploy-tools.sh
	touch $@

## All deployment linters; any warning fails.
lint-deploy: lint-dockerfile lint-chart lint-infra

lint-dockerfile: deploy-tools
	$(VENV)/bin/hadolint --failure-threshold style Dockerfile

lint-chart: deploy-tools
	@mkdir -p $(RENDERED)
	$(HELM_ENV) $(HELM) lint --strict $(CHART)
	$(HELM_ENV) $(HELM) lint --strict $(CHART) -f $(CHART_VALUES_PROD)
	$(HELM_ENV) $(HELM) template exporter $(CHART) --namespace exporter \
		--kube-version $(KUBE_VERSION) > $(RENDERED)/default.yaml
	$(HELM_ENV) $(HELM) template exporter $(CHART) --namespace exporter \
		--kube-version $(KUBE_VERSION) -f $(CHART_VALUES_PROD) > $(RENDERED)/production.yaml
	$(VENV)/bin/kubernetes-validate --strict --quiet -k $(KUBE_VERSION) \
		$(RENDERED)/default.yaml $(RENDERED)/production.yaml

lint-infra: deploy-tools
	$(VENV)/bin/cfn-lint --include-checks I -- infra/*.yaml

## Tests on the rendered chart, compose file, Dockerfile, infra and diagram.
test-deploy: deploy-tools
	HELM=$(HELM) $(PY) -m pytest tests/deploy -q

## Regenerate docs/architecture.png from docs/diagram.py.
diagram: deploy-tools
	$(PY) docs/diagram.py --output docs/architecture
