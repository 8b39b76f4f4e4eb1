"""Controlled vocabularies of the partner contract (partner-contract.md §1, taxonomy.md).

One definition, used by intake's validation, the classifier's act table, the alert rules and
the read API, so that a word means the same thing everywhere.
"""

from __future__ import annotations

from enum import StrEnum


class ActType(StrEnum):
    INTERPOL_RED_NOTICE = "interpol_red_notice"
    INTERPOL_DIFFUSION = "interpol_diffusion"
    EXTRADITION_REQUEST = "extradition_request"
    EXTRADITION_APPROVED = "extradition_approved"
    EXTRADITED = "extradited"
    DETENTION_ABROAD = "detention_abroad"
    DEPORTATION_PROCEEDING = "deportation_proceeding"
    DEPORTED = "deported"
    IRREGULAR_HANDOVER = "irregular_handover"
    OFF_SITE_PROSECUTION = "off_site_prosecution"
    ASSET_FREEZE = "asset_freeze"
    LURING_TO_THIRD_COUNTRY = "luring_to_third_country"
    KIDNAPPING = "kidnapping"
    FORCED_RENDITION = "forced_rendition"
    ENFORCED_DISAPPEARANCE = "enforced_disappearance"
    ASSAULT = "assault"
    ASSASSINATION_ATTEMPT = "assassination_attempt"
    AGENT_APPROACH_ABROAD = "agent_approach_abroad"
    IN_PERSON_INTIMIDATION = "in_person_intimidation"
    PASSPORT_CANCELLED = "passport_cancelled"
    DOCUMENT_RENEWAL_REFUSED = "document_renewal_refused"
    CONSULAR_SERVICE_DENIED = "consular_service_denied"
    FAMILY_THREATENED = "family_threatened"
    FAMILY_DETAINED = "family_detained"
    FAMILY_ASSETS_SEIZED = "family_assets_seized"
    FAMILY_SENT_TO_PERSUADE = "family_sent_to_persuade"
    ONLINE_THREAT = "online_threat"
    SURVEILLANCE_ABROAD = "surveillance_abroad"
    OVERSEAS_POLICE_STATION_CONTACT = "overseas_police_station_contact"
    PRIVATE_INVESTIGATOR = "private_investigator"


class Actor(StrEnum):
    PRC_MPS = "prc_mps"
    PRC_CCDI = "prc_ccdi"
    PRC_MSS = "prc_mss"
    PRC_GOVERNMENT = "prc_government"
    PRC_EMBASSY = "prc_embassy"
    PRC_PROXY = "prc_proxy"
    OVERSEAS_POLICE_STATION = "overseas_police_station"
    PRIVATE_INVESTIGATOR = "private_investigator"
    HOST_POLICE = "host_police"
    HOST_IMMIGRATION = "host_immigration"
    HOST_COURT = "host_court"
    INTERPOL = "interpol"
    UNKNOWN = "unknown"


class ActStatus(StrEnum):
    ATTEMPTED = "attempted"
    PENDING = "pending"
    CARRIED_OUT = "carried_out"
    BLOCKED = "blocked"
    UNKNOWN = "unknown"


class TargetGroup(StrEnum):
    UYGHUR = "uyghur"
    TIBETAN = "tibetan"
    HONGKONGER = "hongkonger"
    SOUTHERN_MONGOLIAN = "southern_mongolian"
    FALUN_GONG = "falun_gong"
    CHRISTIAN = "christian"
    DISSIDENT = "dissident"
    HUMAN_RIGHTS_DEFENDER = "human_rights_defender"
    JOURNALIST = "journalist"
    STUDENT = "student"
    FUGITIVE_ECONOMIC = "fugitive_economic"
    OTHER = "other"
    UNKNOWN = "unknown"


class StatusAbroad(StrEnum):
    REFUGEE = "refugee"
    ASYLUM_SEEKER = "asylum_seeker"
    PERMANENT_RESIDENT = "permanent_resident"
    CITIZEN = "citizen"
    VISA_HOLDER = "visa_holder"
    UNDOCUMENTED = "undocumented"
    UNKNOWN = "unknown"


class Outcome(StrEnum):
    RETURNED = "returned"
    DETAINED = "detained"
    RELEASED = "released"
    PENDING = "pending"
    RELOCATED = "relocated"
    DISAPPEARED = "disappeared"
    DECEASED = "deceased"
    UNKNOWN = "unknown"


class DatePrecision(StrEnum):
    DAY = "day"
    MONTH = "month"
    YEAR = "year"


class Reliability(StrEnum):
    """Admiralty grade of a source's reliability."""

    A = "A"
    B = "B"
    C = "C"
    D = "D"
    E = "E"
    F = "F"


class PaceMethod(StrEnum):
    DIRECT_ATTACK = "direct_attack"
    CO_OPTING = "co_opting"
    MOBILITY_IMPEDIMENT = "mobility_impediment"
    THREAT_FROM_DISTANCE = "threat_from_distance"


class CcdiMethod(StrEnum):
    EXTRADITION = "extradition"
    REPATRIATION = "repatriation"
    OFF_SITE_PROSECUTION = "off_site_prosecution"
    PERSUADE_TO_RETURN = "persuade_to_return"
    KIDNAPPING_OR_LURING = "kidnapping_or_luring"


class PersuasionChannel(StrEnum):
    ADMINISTRATIVE = "administrative"
    FAMILY_OR_ONLINE = "family_or_online"
    AGENTS_ABROAD = "agents_abroad"


class IrCategory(StrEnum):
    IR1 = "IR1"
    IR2 = "IR2"
    IR3 = "IR3"


class Scope(StrEnum):
    EVENTS_WRITE = "events:write"
    INCIDENTS_READ = "incidents:read"
    ALERTS_READ = "alerts:read"
    ALERTS_WRITE = "alerts:write"
    ADMIN = "admin"


# Groups at known risk of persecution on return (alert rule R2).
GROUPS_AT_KNOWN_RISK: frozenset[TargetGroup] = frozenset(
    {
        TargetGroup.UYGHUR,
        TargetGroup.TIBETAN,
        TargetGroup.HONGKONGER,
        TargetGroup.SOUTHERN_MONGOLIAN,
        TargetGroup.FALUN_GONG,
        TargetGroup.CHRISTIAN,
        TargetGroup.DISSIDENT,
        TargetGroup.HUMAN_RIGHTS_DEFENDER,
        TargetGroup.JOURNALIST,
    }
)
