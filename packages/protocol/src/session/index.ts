export { type Clock, ManualClock, systemClock, type TimerHandle } from './clock.js';
export {
  AuthError,
  ClosedError,
  RequestError,
  SessionError,
  SessionErrorCode,
  TimeoutError,
} from './errors.js';
export { MemoryTransport } from './memory-transport.js';
export {
  type InputHandler,
  type OutputHandler,
  type RegisteredResource,
  type ResourceCall,
  type ResourceDefinition,
  ResourceError,
  ResourceKind,
  type ResourceMatch,
  ResourceRegistry,
  type RunHandler,
  resourceKind,
  resourcePath,
} from './resources.js';
export {
  type CallOptions,
  ConnectError,
  type ConnectInfo,
  type Credentials,
  type InboundSubscription,
  type RemoteStream,
  type RemoteStreamHandlers,
  type Reply,
  type ServerCall,
  Session,
  type SessionOptions,
  type SessionRole,
  type SessionState,
  SUBSCRIBE_EVENT,
  type SubscriptionHandlers,
} from './session.js';
export type { Transport, TransportHandler } from './transport.js';
export { openBrowserWebSocket, WebSocketTransport } from './websocket-transport.js';
