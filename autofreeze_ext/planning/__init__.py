"""Decisions about resources, from measured step times: the time goal's batch packer
(:mod:`.packing`), the cost goal's worker model and chooser shared by the live goal and the
offline cluster simulation (:mod:`.planner`), the step probe both read (:mod:`.step_probe`)
and the full-run time estimate of a report (:mod:`.estimate`)."""
