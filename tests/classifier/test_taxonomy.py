"""Structured acts: every row of the act table of taxonomy.md, exactly."""

from __future__ import annotations

import pytest

from services.classifier.narrative import LEXICON_FILE, default_lexicon, parse_lexicon
from services.classifier.taxonomy import (
    ACT_TABLE_FILE,
    classifier_version,
    classify_acts,
    classify_report,
    default_act_table,
    parse_act_table,
)
from shared.events import Act, Narrative
from shared.vocabulary import ActStatus, ActType
from tests.classifier.spec_table import SPEC_TABLE


def test_the_spec_table_covers_the_whole_act_vocabulary() -> None:
    assert set(SPEC_TABLE) == {a.value for a in ActType}


@pytest.mark.parametrize("act_type", sorted(SPEC_TABLE))
def test_each_act_gets_exactly_the_labels_of_its_row(act_type: str) -> None:
    pace, ccdi, channel, ir = SPEC_TABLE[act_type]
    got = classify_acts([Act(type=ActType(act_type))])
    assert got.pace_methods == [pace]
    assert got.ccdi_methods == ([ccdi] if ccdi else [])
    assert got.persuasion_channels == ([channel] if channel else [])
    assert got.ir_categories == ([ir] if ir else [])
    # Every label has its evidence: the rule and the act it came from.
    labels = [label for label in (pace, ccdi, channel, ir) if label]
    assert sorted(e.label for e in got.evidence) == sorted(labels)
    assert {(e.rule, e.from_) for e in got.evidence} == {(f"act:{act_type}", "acts[0]")}


def test_blocked_acts_count_and_labels_merge_across_acts() -> None:
    got = classify_acts([
        Act(type=ActType.INTERPOL_RED_NOTICE, status=ActStatus.BLOCKED),
        Act(type=ActType.FAMILY_THREATENED),
        Act(type=ActType.ONLINE_THREAT),
    ])
    assert got.pace_methods == ["co_opting", "threat_from_distance"]
    assert got.ccdi_methods == ["extradition", "persuade_to_return"]
    assert got.persuasion_channels == ["family_or_online"]
    assert got.ir_categories == ["IR1", "IR2"]
    assert {e.from_ for e in got.evidence if e.label == "persuade_to_return"} == {"acts[1]", "acts[2]"}


def test_formal_channels_alone_are_not_involuntary_returns() -> None:
    formal = [ActType.EXTRADITION_REQUEST, ActType.DEPORTED, ActType.OFF_SITE_PROSECUTION, ActType.INTERPOL_DIFFUSION]
    assert classify_acts([Act(type=a) for a in formal]).ir_categories == []


def test_an_act_table_missing_a_row_is_refused() -> None:
    text = ACT_TABLE_FILE.read_text().replace('kidnapping                      = ["direct_attack"', "# removed")
    with pytest.raises(ValueError, match="kidnapping"):
        parse_act_table(text)


def test_classifier_version_changes_when_either_rule_file_changes() -> None:
    table, lexicon = default_act_table(), default_lexicon()
    base = classifier_version(table, lexicon)
    assert base.startswith(f"{table.version}+{lexicon.version}+")
    edited_table = parse_act_table(ACT_TABLE_FILE.read_text() + "\n# a comment is a change too\n")
    edited_lexicon = parse_lexicon(LEXICON_FILE.read_bytes().replace(b"\\bred[- ]notices?\\b", b"\\bred notices?\\b"))
    assert classifier_version(edited_table, lexicon) != base
    assert classifier_version(table, edited_lexicon) != base
    assert classify_report([], None).classifier_version == base


def test_acts_and_narrative_are_both_used_with_their_own_evidence() -> None:
    got = classify_report(
        [Act(type=ActType.INTERPOL_RED_NOTICE)],
        Narrative(text="Her brother in Kashgar was detained last spring.", lang="en"),
    )
    assert got.ir_categories == ["IR1"]
    assert {e.from_ for e in got.evidence} == {"acts[0]", "narrative"}
    assert all(e.span is None for e in got.evidence if e.from_ == "acts[0]")
