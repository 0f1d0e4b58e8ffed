import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AlertDetails(_message.Message):
    __slots__ = ("metric", "value", "baseline", "threshold", "deviation_sigma")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    DEVIATION_SIGMA_FIELD_NUMBER: _ClassVar[int]
    metric: str
    value: float
    baseline: float
    threshold: float
    deviation_sigma: float
    def __init__(self, metric: _Optional[str] = ..., value: _Optional[float] = ..., baseline: _Optional[float] = ..., threshold: _Optional[float] = ..., deviation_sigma: _Optional[float] = ...) -> None: ...

class AlertMember(_message.Message):
    __slots__ = ("key", "labels", "severity", "confidence", "details", "count", "first_seen", "last_seen", "peak_value", "status", "resolved_at", "silenced_by", "notified", "trace_ids")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    PEAK_VALUE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    SILENCED_BY_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_FIELD_NUMBER: _ClassVar[int]
    TRACE_IDS_FIELD_NUMBER: _ClassVar[int]
    key: str
    labels: _containers.ScalarMap[str, str]
    severity: str
    confidence: float
    details: AlertDetails
    count: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    peak_value: float
    status: str
    resolved_at: _timestamp_pb2.Timestamp
    silenced_by: str
    notified: bool
    trace_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, key: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., severity: _Optional[str] = ..., confidence: _Optional[float] = ..., details: _Optional[_Union[AlertDetails, _Mapping]] = ..., count: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., peak_value: _Optional[float] = ..., status: _Optional[str] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., silenced_by: _Optional[str] = ..., notified: _Optional[bool] = ..., trace_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Alert(_message.Message):
    __slots__ = ("alert_id", "timestamp", "severity", "anomaly_type", "service_name", "model", "detection_method", "confidence", "details", "context", "root_cause", "remediation", "related_alerts", "runbook_url", "summary", "fingerprint", "status", "count", "first_seen", "last_seen", "peak_value", "acknowledged_by", "acknowledged_at", "resolved_at", "resolved_reason", "silenced_by", "storm_id", "labels", "members", "notifications", "notified_at", "notify_due")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPE_FIELD_NUMBER: _ClassVar[int]
    SERVICE_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DETECTION_METHOD_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    ROOT_CAUSE_FIELD_NUMBER: _ClassVar[int]
    REMEDIATION_FIELD_NUMBER: _ClassVar[int]
    RELATED_ALERTS_FIELD_NUMBER: _ClassVar[int]
    RUNBOOK_URL_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    PEAK_VALUE_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_BY_FIELD_NUMBER: _ClassVar[int]
    ACKNOWLEDGED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_AT_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_REASON_FIELD_NUMBER: _ClassVar[int]
    SILENCED_BY_FIELD_NUMBER: _ClassVar[int]
    STORM_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    NOTIFIED_AT_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_DUE_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    timestamp: _timestamp_pb2.Timestamp
    severity: str
    anomaly_type: str
    service_name: str
    model: str
    detection_method: str
    confidence: float
    details: AlertDetails
    context: _struct_pb2.Struct
    root_cause: str
    remediation: _containers.RepeatedScalarFieldContainer[str]
    related_alerts: _containers.RepeatedScalarFieldContainer[str]
    runbook_url: str
    summary: str
    fingerprint: str
    status: str
    count: int
    first_seen: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    peak_value: float
    acknowledged_by: str
    acknowledged_at: _timestamp_pb2.Timestamp
    resolved_at: _timestamp_pb2.Timestamp
    resolved_reason: str
    silenced_by: str
    storm_id: str
    labels: _containers.ScalarMap[str, str]
    members: _containers.RepeatedCompositeFieldContainer[AlertMember]
    notifications: int
    notified_at: _timestamp_pb2.Timestamp
    notify_due: _timestamp_pb2.Timestamp
    def __init__(self, alert_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., severity: _Optional[str] = ..., anomaly_type: _Optional[str] = ..., service_name: _Optional[str] = ..., model: _Optional[str] = ..., detection_method: _Optional[str] = ..., confidence: _Optional[float] = ..., details: _Optional[_Union[AlertDetails, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., root_cause: _Optional[str] = ..., remediation: _Optional[_Iterable[str]] = ..., related_alerts: _Optional[_Iterable[str]] = ..., runbook_url: _Optional[str] = ..., summary: _Optional[str] = ..., fingerprint: _Optional[str] = ..., status: _Optional[str] = ..., count: _Optional[int] = ..., first_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., peak_value: _Optional[float] = ..., acknowledged_by: _Optional[str] = ..., acknowledged_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., resolved_reason: _Optional[str] = ..., silenced_by: _Optional[str] = ..., storm_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., members: _Optional[_Iterable[_Union[AlertMember, _Mapping]]] = ..., notifications: _Optional[int] = ..., notified_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., notify_due: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class AlertEvent(_message.Message):
    __slots__ = ("event", "alert", "lagged")
    EVENT_FIELD_NUMBER: _ClassVar[int]
    ALERT_FIELD_NUMBER: _ClassVar[int]
    LAGGED_FIELD_NUMBER: _ClassVar[int]
    event: str
    alert: Alert
    lagged: int
    def __init__(self, event: _Optional[str] = ..., alert: _Optional[_Union[Alert, _Mapping]] = ..., lagged: _Optional[int] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("severity", "service", "model", "anomaly_type", "status")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    severity: _containers.RepeatedScalarFieldContainer[str]
    service: str
    model: str
    anomaly_type: str
    status: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, severity: _Optional[_Iterable[str]] = ..., service: _Optional[str] = ..., model: _Optional[str] = ..., anomaly_type: _Optional[str] = ..., status: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAlertRequest(_message.Message):
    __slots__ = ("alert_id",)
    ALERT_ID_FIELD_NUMBER: _ClassVar[int]
    alert_id: str
    def __init__(self, alert_id: _Optional[str] = ...) -> None: ...

class ListAlertsRequest(_message.Message):
    __slots__ = ("severity", "service", "model", "anomaly_type", "status", "start", "end", "limit", "offset")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    SERVICE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ANOMALY_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    severity: _containers.RepeatedScalarFieldContainer[str]
    service: str
    model: str
    anomaly_type: str
    status: _containers.RepeatedScalarFieldContainer[str]
    start: _timestamp_pb2.Timestamp
    end: _timestamp_pb2.Timestamp
    limit: int
    offset: int
    def __init__(self, severity: _Optional[_Iterable[str]] = ..., service: _Optional[str] = ..., model: _Optional[str] = ..., anomaly_type: _Optional[str] = ..., status: _Optional[_Iterable[str]] = ..., start: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ..., offset: _Optional[int] = ...) -> None: ...

class ListAlertsResponse(_message.Message):
    __slots__ = ("alerts", "total")
    ALERTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    alerts: _containers.RepeatedCompositeFieldContainer[Alert]
    total: int
    def __init__(self, alerts: _Optional[_Iterable[_Union[Alert, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...
