export {
  AuthError,
  ClosedError,
  RequestError,
  type ResourceCall,
  type ResourceDefinition,
  ResourceError,
  SessionError,
  SessionErrorCode,
  TimeoutError,
} from '@iotmp/protocol';
export type { PsonValue } from '@iotmp/pson';
export type { ReconnectOptions } from './backoff.js';
export {
  type ConfirmOption,
  DeviceCore,
  type DeviceOptions,
  type DeviceState,
  type DeviceStatus,
  type DeviceTransportName,
  ServerResource,
  type Subscription,
  type TopicMessage,
} from './device.js';
