"""The four tnrwatch services: intake, classifier, alerts, projections."""
