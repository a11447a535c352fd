"""ebRIM/XDS identifiers from ITI TF-3 4.2.5 (classification schemes, object types, statuses)."""

# Object types
DOCUMENT_ENTRY_STABLE = "urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"
DOCUMENT_ENTRY_ON_DEMAND = "urn:uuid:34268e47-fdf5-41a6-ba33-82133c465248"
REGISTRY_PACKAGE = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:RegistryPackage"
ASSOCIATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Association"
CLASSIFICATION = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:Classification"
EXTERNAL_IDENTIFIER = "urn:oasis:names:tc:ebxml-regrep:ObjectType:RegistryObject:ExternalIdentifier"

# Classification nodes that mark a RegistryPackage as SubmissionSet or Folder
SUBMISSION_SET_NODE = "urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"
FOLDER_NODE = "urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"

# Classification nodes that mark an object as made by a Metadata-Limited Document Source
SS_LIMITED_METADATA = "urn:uuid:5003a9db-8d8d-49e6-bf0c-990e34ac7707"
DE_LIMITED_METADATA = "urn:uuid:ab9b591b-83ab-4d03-8f5d-f93b1fb92e85"
FOL_LIMITED_METADATA = "urn:uuid:2c144a76-29a9-4b7c-af54-b25409fe7d03"

# DocumentEntry classification schemes
DE_AUTHOR = "urn:uuid:93606bcf-9494-43ec-9b4e-a7748d1a838d"
DE_CLASS_CODE = "urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a"
DE_CONFIDENTIALITY_CODE = "urn:uuid:f4f85eac-e6cb-4883-b524-f2705394840f"
DE_EVENT_CODE = "urn:uuid:2c6b8cb7-8b2a-4051-b291-b1ae6a575ef4"
DE_FORMAT_CODE = "urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d"
DE_HEALTHCARE_FACILITY_TYPE_CODE = "urn:uuid:f33fb8ac-18af-42cc-ae0e-ed0b0bdb91e1"
DE_PRACTICE_SETTING_CODE = "urn:uuid:cccf5598-8b07-4b77-a05e-ae952c785ead"
DE_TYPE_CODE = "urn:uuid:f0306f51-975f-434e-a61c-c59651d33983"
DE_PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
DE_UNIQUE_ID = "urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab"

# SubmissionSet
SS_AUTHOR = "urn:uuid:a7058bb9-b4e4-4307-ba5b-e3f0ab85e12d"
SS_CONTENT_TYPE_CODE = "urn:uuid:aa543740-bdda-424e-8c96-df4873be8500"
SS_PATIENT_ID = "urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446"
SS_SOURCE_ID = "urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832"
SS_UNIQUE_ID = "urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8"

# Folder
FOL_CODE_LIST = "urn:uuid:1ba97051-7806-41a8-a48b-8fce7af683c5"
FOL_PATIENT_ID = "urn:uuid:f64ffdf0-4b97-4e06-b79f-a52b38ec2f8a"
FOL_UNIQUE_ID = "urn:uuid:75df8f67-9973-4fbe-a900-df66cefecc5a"

# Association: the optional Association Documentation classification of relationship associations
ASSOCIATION_DOCUMENTATION = "urn:uuid:abd807a3-4432-4053-87b4-fd82c643d1f3"

# Availability status
STATUS_APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
STATUS_DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
STATUS_SUBMITTED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Submitted"

# Association types
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
RPLC = "urn:ihe:iti:2007:AssociationType:RPLC"
APND = "urn:ihe:iti:2007:AssociationType:APND"
XFRM = "urn:ihe:iti:2007:AssociationType:XFRM"
XFRM_RPLC = "urn:ihe:iti:2007:AssociationType:XFRM_RPLC"
SIGNS = "urn:ihe:iti:2007:AssociationType:signs"
IS_SNAPSHOT_OF = "urn:ihe:iti:2010:AssociationType:IsSnapshotOf"
#: ITI-57 status change (ITI TF-2b 3.57.4.1.3.3.2): only in Update Document Set requests.
UPDATE_AVAILABILITY_STATUS = "urn:ihe:iti:2010:AssociationType:UpdateAvailabilityStatus"
RELATIONSHIP_TYPES = frozenset({RPLC, APND, XFRM, XFRM_RPLC, SIGNS, IS_SNAPSHOT_OF})
REPLACING_TYPES = frozenset({RPLC, XFRM_RPLC})
ASSOCIATION_TYPES = RELATIONSHIP_TYPES | {HAS_MEMBER}
