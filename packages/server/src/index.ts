export { ConfigError, DEFAULT_CONFIG, loadConfig, type ServerConfig } from './config.js';
export { DeviceHub, type DeviceStateChange, type LiveDevice } from './devices/hub.js';
export { type RunningServer, startServer, VERSION } from './server.js';
