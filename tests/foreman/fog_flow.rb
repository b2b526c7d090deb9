# Foreman's KubeVirt compute resource, as fog-kubevirt drives Ruby's kubeclient (Debian's
# ruby-kubeclient), against `converge serve`. fog-kubevirt itself is not packaged; this makes
# exactly its calls, in Foreman's order, through the same client: one Kubeclient::Client per API
# group, each made after fog's version detection (a rest-client GET of /api or /apis/<group>),
# PUT of the whole object as read to start and stop, DELETE with no body.
#
# Usage: ruby fog_flow.rb PHASE  (connect | build-create | image-create | start | wait-running |
#        stop | delete-build | delete-image)
# Connection form, from the environment: CONVERGE_HOST, CONVERGE_PORT, CONVERGE_TOKEN,
# CONVERGE_CA (a PEM file), FOREMAN_NAMESPACE, and per flow VM_NAME, NAD_NAME, DATASOURCE,
# DATASOURCE_NAMESPACE, STORAGE_CLASS (the class picked in Foreman's form, default `local`).
# Prints one JSON line with what it read.

require 'json'
require 'openssl'
require 'rest-client'
require 'kubeclient'

# fog-kubevirt's Compute::Real, the parts Foreman's compute resource uses.
class FogKubevirt
  KUBEVIRT_GROUP = 'kubevirt.io'.freeze
  NETWORK_GROUP = 'k8s.cni.cncf.io'.freeze
  STORAGE_GROUP = 'storage.k8s.io'.freeze

  attr_reader :namespace

  def initialize(host:, port:, token:, ca:, namespace:, kubevirt_version:)
    @host = host
    @port = port
    @token = token
    @namespace = namespace
    @kubevirt_version = kubevirt_version
    # obtain_ssl_options with kubevirt_verify_ssl on: the CA text, split into certificates.
    store = OpenSSL::X509::Store.new
    ca.split(/(?=-----BEGIN)/).reject(&:empty?).each { |pem| store.add_cert(OpenSSL::X509::Certificate.new(pem)) }
    @ssl = { verify_ssl: OpenSSL::SSL::VERIFY_PEER, cert_store: store }
    @clients = {}
  end

  def url(path)
    URI::Generic.build(scheme: 'https', host: @host, port: @port, path: path).to_s
  end

  # detect_version: the group's preferred version, or the pinned one for kubevirt.io.
  def detect_version(path)
    body = RestClient::Resource.new(url(path), ssl_cert_store: @ssl[:cert_store], verify_ssl: @ssl[:verify_ssl],
                                               headers: { Authorization: "Bearer #{@token}" }).get
    response = JSON.parse(body)
    if path.include?(KUBEVIRT_GROUP)
      @kubevirt_version || response['preferredVersion']['version']
    else
      (response['preferredVersion'] && response['preferredVersion']['version']) || response['versions'][0]
    end
  end

  def client(path)
    version = detect_version(path)
    @clients[path + '/' + version] ||= Kubeclient::Client.new(
      url(path), version, ssl_options: @ssl, auth_options: { bearer_token: @token }
    )
  end

  def kube_client
    client('/api')
  end

  def kubevirt_client
    client('/apis/' + KUBEVIRT_GROUP)
  end

  def kube_net_client
    client('/apis/' + NETWORK_GROUP)
  end

  def kube_storage_client
    client('/apis/' + STORAGE_GROUP)
  end

  # test_connection: valid? && virt_supported?
  def valid?
    kube_client.api_valid? && kube_client.get_namespace(namespace)
  end

  def virt_supported?
    kubevirt_client.api['versions'].any? { |ver| ver['groupVersion']&.start_with?(KUBEVIRT_GROUP) }
  end

  def networkattachmentdefs
    kube_net_client.get_network_attachment_definitions
  end

  def storageclasses
    kube_storage_client.get_storage_classes
  end

  def get_raw_vm(name)
    kubevirt_client.get_virtual_machine(name, namespace).to_h
  end

  # VmAction#start / #stop: the whole object as read, with running (or runStrategy) changed.
  def set_running(name, on)
    vm = get_raw_vm(name)
    if vm[:spec].key?(:running)
      vm[:spec][:running] = on
    else
      vm[:spec][:runStrategy] = on ? 'Always' : 'Halted'
    end
    kubevirt_client.update_virtual_machine(vm)
  end

  def vmi(name)
    kubevirt_client.get_virtual_machine_instance(name, namespace).to_h
  rescue Kubeclient::ResourceNotFoundError
    nil
  end
end

def env(name)
  ENV.fetch(name) { abort "#{name} is not set" }
end

def fog
  FogKubevirt.new(host: env('CONVERGE_HOST'), port: env('CONVERGE_PORT').to_i, token: env('CONVERGE_TOKEN'),
                  ca: File.read(env('CONVERGE_CA')), namespace: env('FOREMAN_NAMESPACE'),
                  kubevirt_version: ENV.fetch('KUBEVIRT_VERSION', 'v1alpha3'))
end

def report(hash)
  puts JSON.generate(hash)
end

def macs(vm)
  vm[:spec][:template][:spec][:domain][:devices][:interfaces].map { |i| [i[:name], i[:macAddress]] }.to_h
end

# The VM fog-kubevirt's Vms#create builds, with Foreman's options.
def vm_body(name, volumes:, disks:, interfaces:, networks:, templates: nil)
  vm = {
    kind: 'VirtualMachine',
    metadata: { labels: { 'kubevirt.io/vm': name }, name: name, namespace: fog.namespace },
    spec: {
      running: false,
      template: {
        metadata: { creationTimestamp: nil, labels: { 'kubevirt.io/vm': name } },
        spec: {
          domain: {
            devices: { disks: disks, interfaces: interfaces },
            machine: { type: '' },
            resources: { requests: { memory: '256M' } },
            cpu: { cores: 1 }
          },
          terminationGracePeriodSeconds: 0,
          volumes: volumes,
          networks: networks
        }
      }
    }
  }
  vm[:spec][:dataVolumeTemplates] = templates if templates
  vm
end

def userdata_secret(f, name)
  Kubeclient::Resource.new(
    metadata: { name: "#{name}-userdata", namespace: f.namespace },
    type: 'Opaque',
    data: { userdata: ["#cloud-config\nhostname: #{name}\n"].pack('m0') }
  )
end

# What Foreman does after creating: the Secret again, owned by the VM, so it goes with it.
def own_secret(f, name, vm)
  secret = f.kube_client.get_secret("#{name}-userdata", f.namespace).to_h
  secret[:metadata][:ownerReferences] = [{
    apiVersion: vm[:apiVersion], kind: 'VirtualMachine', name: name, uid: vm[:metadata][:uid],
    controller: false, blockOwnerDeletion: false
  }]
  f.kube_client.update_secret(Kubeclient::Resource.new(secret))
end

phase = ARGV.fetch(0) { abort 'usage: fog_flow.rb PHASE' }
name = ENV['VM_NAME']
f = fog

case phase
when 'connect'
  ok = f.valid? && f.virt_supported?
  nodes = f.kube_client.get_nodes.map do |n|
    addresses = n.status.addresses.map { |a| [a.type, a.address] }.to_h
    { name: n.metadata.name, addresses: addresses, kubelet: n.status.nodeInfo.kubeletVersion }
  end
  report(connected: ok ? true : false,
         nads: f.networkattachmentdefs.map { |n| "#{n.metadata.namespace}/#{n.metadata.name}" },
         storageclasses: f.storageclasses.map { |s| s.metadata.name },
         nodes: nodes)
when 'build-create'
  # Foreman's network-based build: PVC disks, a NIC that boots first on a NAD bridge, the pod
  # network beside it, cloud-init from a Secret.
  claims = (1..2).map do |i|
    claim = "#{name}-claim-#{i}"
    f.kube_client.create_persistent_volume_claim(Kubeclient::Resource.new(
      apiVersion: 'v1', kind: 'PersistentVolumeClaim',
      metadata: { name: claim, namespace: f.namespace },
      spec: { storageClassName: ENV.fetch('STORAGE_CLASS', 'local'), resources: { requests: { storage: '64M' } },
              accessModes: ['ReadWriteOnce'] }
    ))
    claim
  end
  f.kube_client.create_secret(userdata_secret(f, name))
  disks = claims.each_with_index.map { |_, i| { name: "#{name}-disk-0#{i}", disk: { bus: 'virtio' }, bootOrder: i + 2 } }
  volumes = claims.each_with_index.map { |c, i| { name: "#{name}-disk-0#{i}", persistentVolumeClaim: { claimName: c } } }
  disks << { name: 'cloudinitvolume', disk: { bus: 'virtio' } }
  volumes << { name: 'cloudinitvolume', cloudInitNoCloud: { secretRef: { name: "#{name}-userdata" } } }
  nad = env('NAD_NAME')
  interfaces = [{ bridge: {}, name: nad, bootOrder: 1 }, { bridge: {}, name: 'default' }]
  networks = [{ name: nad, multus: { networkName: nad } }, { name: 'default', pod: {} }]
  vm = f.kubevirt_client.create_virtual_machine(
    Kubeclient::Resource.new(vm_body(name, volumes: volumes, disks: disks, interfaces: interfaces, networks: networks))
  ).to_h
  own_secret(f, name, vm)
  # Foreman shows the MACs right away: read back, before the VM ever ran.
  report(uid: vm[:metadata][:uid], apiVersion: vm[:apiVersion], created_macs: macs(vm), read_macs: macs(f.get_raw_vm(name)))
when 'image-create'
  ds = env('DATASOURCE')
  templates = [{ metadata: { name: "#{name}-root" },
                 spec: { sourceRef: { kind: 'DataSource', name: ds, namespace: env('DATASOURCE_NAMESPACE') },
                         storage: { resources: { requests: { storage: '256Mi' } } } } }]
  volumes = [{ name: "#{name}-root", dataVolume: { name: "#{name}-root" } }]
  disks = [{ name: "#{name}-root", disk: { bus: 'virtio' }, bootOrder: 1 }]
  interfaces = [{ bridge: {}, name: 'default' }]
  networks = [{ name: 'default', pod: {} }]
  body = vm_body(name, volumes: volumes, disks: disks, interfaces: interfaces, networks: networks, templates: templates)
  vm = f.kubevirt_client.create_virtual_machine(Kubeclient::Resource.new(body)).to_h
  report(uid: vm[:metadata][:uid], created_macs: macs(vm))
when 'start', 'stop'
  vm = f.set_running(name, phase == 'start').to_h
  report(running: vm[:spec][:running], runStrategy: vm[:spec][:runStrategy])
when 'wait-running'
  # Foreman polls the server until it is ready and has an address.
  deadline = Time.now + Integer(ENV.fetch('WAIT_SECONDS', '240'))
  loop do
    vmi = f.vmi(name)
    iface = vmi && (vmi.dig(:status, :interfaces) || []).find { |i| i[:name] == 'default' }
    if vmi && vmi.dig(:status, :phase) == 'Running' && iface && iface[:ipAddress]
      report(phase: 'Running', node: vmi[:status][:nodeName], ip: iface[:ipAddress], mac: iface[:mac],
             vm_status: f.get_raw_vm(name).dig(:status, :printableStatus))
      break
    end
    abort "#{name} not Running with an address: #{vmi.inspect}" if Time.now > deadline
    sleep 1
  end
when 'delete-build', 'delete-image'
  # Server#destroy: stop, then delete; Foreman then deletes the claims it made.
  f.set_running(name, false)
  f.kubevirt_client.delete_virtual_machine(name, f.namespace)
  if phase == 'delete-build'
    (1..2).each { |i| f.kube_client.delete_persistent_volume_claim("#{name}-claim-#{i}", f.namespace) }
  end
  gone = begin
    f.kubevirt_client.get_virtual_machine(name, f.namespace)
    false
  rescue Kubeclient::ResourceNotFoundError
    true
  end
  report(deleted: gone)
else
  abort "unknown phase #{phase}"
end
