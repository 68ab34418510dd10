"""Security: personal-data encryption here; tokens, identities and ACLs in sibling modules.

`Personal` marks a field as personal data; `PersonalData` encrypts such
fields under a key per data subject and forgets a subject by destroying its
key (crypto-shredding). See `tidelog.security.encryption`.
"""

from tidelog.security.encryption import FORGOTTEN, Personal, PersonalData, personal_fields

__all__ = ["FORGOTTEN", "Personal", "PersonalData", "personal_fields"]
